"""/metrics holds a thread per connection: idle connections are closed by the server (attack
review, session 5: 300 idle connections made 300 threads, kept forever), and a scrape after
them still answers."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest

from authsvc import metrics


def test_idle_connections_are_closed_and_scrapes_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics._ScrapeHandler, "timeout", 0.3)
    exposition = metrics.serve_http("127.0.0.1:0")
    try:
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", exposition.port)) for _ in range(30)]
        try:
            closed = 0
            deadline = time.monotonic() + 20  # a bound on waiting, not a timing assertion
            for connection in idle:
                connection.settimeout(max(deadline - time.monotonic(), 0.1))
                try:
                    closed += connection.recv(1) == b""  # EOF: the server hung up
                except OSError:
                    closed += 1
            assert closed == len(idle)
        finally:
            for connection in idle:
                connection.close()
        for _ in range(200):  # their threads end with them
            if threading.active_count() <= before:
                break
            time.sleep(0.05)
        assert threading.active_count() <= before
        with urllib.request.urlopen(f"http://127.0.0.1:{exposition.port}/metrics") as answer:
            assert b"authsvc_rpc_requests" in answer.read()
    finally:
        exposition.close()
        metrics.stop_recording()
