"""The load test's phone: an SMS sink that the server delivers to, and the simulated users read.

Fed either by the `http` provider (POST /sms, the JSON body of authsvc.config.HttpGateway's
default template, signed with HMAC-SHA-256 when --hmac-secret is given) or by the `file`
provider (--tail FILE: the JSON lines it appends). Users then ask for their code:

    GET /code?to=%2B33600000042&timeout=10   -> 200 {"code": "123456", "age_ms": 12.5}
                                               204 when nothing came within `timeout`
    GET /stats                               -> {"received": n, "taken": n, "rejected": n, ...}
    GET /health                              -> 200

Each message is handed out once, oldest first, per number. The sink keeps nothing on disk and
listens on the loopback only. Run: python -m loadtests.sms_sink --port 0 --port-file FILE
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

_CODE = re.compile(r"(?<!\d)(\d{6})(?!\d)")
MAX_WAIT_S = 30.0


class Mailbox:
    """Codes per number, first in first out, with blocking reads."""

    def __init__(self) -> None:
        self._codes: defaultdict[str, deque[tuple[str, float]]] = defaultdict(deque)
        self._cond = threading.Condition()
        self.received = 0
        self.taken = 0
        self.rejected = 0
        self.no_code = 0

    def put(self, to: str, text: str) -> bool:
        match = _CODE.search(text)
        with self._cond:
            if match is None:
                self.no_code += 1
                return False
            self._codes[to].append((match.group(1), time.monotonic()))
            self.received += 1
            self._cond.notify_all()
            return True

    def take(self, to: str, timeout: float) -> tuple[str, float] | None:
        deadline = time.monotonic() + min(max(timeout, 0.0), MAX_WAIT_S)
        with self._cond:
            while not self._codes.get(to):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            code, at = self._codes[to].popleft()
            if not self._codes[to]:
                del self._codes[to]
            self.taken += 1
            return code, (time.monotonic() - at) * 1000.0

    def stats(self) -> dict[str, int]:
        with self._cond:
            pending = sum(len(q) for q in self._codes.values())
            return {
                "received": self.received,
                "taken": self.taken,
                "pending": pending,
                "rejected": self.rejected,
                "without_code": self.no_code,
            }


def make_handler(mailbox: Mailbox, secret: bytes | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None  # quiet: thousands of requests per second

        def _reply(self, status: int, body: object | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if urlparse(self.path).path != "/sms":
                return self._reply(404)
            if secret is not None:
                expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
                given = self.headers.get("X-Authsvc-Signature", "")
                if not hmac.compare_digest(expected, given):
                    mailbox.rejected += 1
                    return self._reply(401, {"error": "bad signature"})
            try:
                message = json.loads(body)
                mailbox.put(str(message["to"]), str(message["text"]))
            except (ValueError, KeyError, TypeError):
                mailbox.rejected += 1
                return self._reply(400, {"error": "bad message"})
            reference = str(message.get("reference", ""))
            return self._reply(200, {"id": f"sink-{reference}"})

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/health":
                return self._reply(200, {"ok": True})
            if url.path == "/stats":
                return self._reply(200, mailbox.stats())
            if url.path != "/code":
                return self._reply(404)
            query = parse_qs(url.query)
            to = query.get("to", [""])[0]
            timeout = float(query.get("timeout", ["10"])[0])
            found = mailbox.take(to, timeout)
            if found is None:
                return self._reply(204)
            return self._reply(200, {"code": found[0], "age_ms": round(found[1], 2)})

    return Handler


def tail(path: Path, mailbox: Mailbox, stop: threading.Event) -> None:
    """Follow the `file` provider's JSON lines (from the start of the file)."""
    position = 0
    buffer = b""
    while not stop.is_set():
        try:
            with path.open("rb") as handle:
                handle.seek(position)
                chunk = handle.read()
        except FileNotFoundError:
            chunk = b""
        if not chunk:
            time.sleep(0.01)
            continue
        position += len(chunk)
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                mailbox.rejected += 1
                continue
            if message.get("channel") in ("sms", "voice"):
                mailbox.put(str(message["to"]), str(message["text"]))


def serve(
    port: int, *, secret: bytes | None = None, tail_file: Path | None = None
) -> tuple[ThreadingHTTPServer, Mailbox, threading.Event]:
    """Start the sink in background threads; returns (server, mailbox, stop event)."""
    mailbox = Mailbox()
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(mailbox, secret))
    server.daemon_threads = True
    stop = threading.Event()
    threading.Thread(target=server.serve_forever, name="sms-sink", daemon=True).start()
    if tail_file is not None:
        threading.Thread(
            target=tail, args=(tail_file, mailbox, stop), name="sms-tail", daemon=True
        ).start()
    return server, mailbox, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument("--hmac-secret", help="check the http provider's signature")
    parser.add_argument("--tail", type=Path, help="follow the file provider's outbox file")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this")
    args = parser.parse_args()
    server, _, stop = serve(
        args.port,
        secret=args.hmac_secret.encode() if args.hmac_secret else None,
        tail_file=args.tail,
    )
    if args.port_file:
        args.port_file.write_text(str(server.server_address[1]))
    # Bounded: the sink never outlives a forgotten load test by more than --max-seconds.
    stop.wait(args.max_seconds)
    stop.set()
    server.shutdown()


if __name__ == "__main__":
    main()
