"""The load test's phone: an SMS sink that the server delivers to, and the simulated users read.

Fed either by the `http` provider (POST /sms, the JSON body of authsvc.config.HttpGateway's
default template, signed with HMAC-SHA-256 when --hmac-secret is given) or by the `file`
provider (--tail FILE: the JSON lines it appends). Users then ask for their code:

    GET /code?to=%2B33600000042&timeout=10   -> 200 {"code": "123456", "age_ms": 12.5}
                                               204 when nothing came within `timeout`
    GET /stats                               -> {"received": n, "taken": n, "rejected": n, ...}
    GET /health                              -> 200

Two gateways in one sink, for the failover run (loadtests/run.py --fail-primary-at): POST /sms
is the primary, POST /backup/sms the backup, each counted apart. `POST /control?gateway=
primary&state=down` makes a gateway stop answering (each request is held --stall-s, then
closed unanswered and not delivered, as a hung aggregator behaves); `state=up` brings it
back. Every accepted message's reference is counted: one accepted twice (by either gateway) is
a code sent twice by the service.

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
from collections import Counter, defaultdict, deque
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
        # Per gateway: messages accepted, and requests held unanswered while it was down.
        self.accepted: Counter[str] = Counter()
        self.stalled: Counter[str] = Counter()
        self.after_outage: Counter[str] = Counter()
        self._references: Counter[str] = Counter()
        self.down: set[str] = set()
        self._came_back: set[str] = set()

    def set_state(self, gateway: str, state: str) -> None:
        with self._cond:
            if state == "down":
                self.down.add(gateway)
            elif gateway in self.down:
                self.down.discard(gateway)
                self._came_back.add(gateway)

    def accept(self, gateway: str, reference: str) -> None:
        with self._cond:
            self.accepted[gateway] += 1
            if gateway in self._came_back:  # the service went back to it after its outage
                self.after_outage[gateway] += 1
            if reference:
                self._references[reference] += 1

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
            stats = {
                "received": self.received,
                "taken": self.taken,
                "pending": pending,
                "rejected": self.rejected,
                "without_code": self.no_code,
            }
            if self.accepted.get("backup") or self.stalled:
                stats |= {
                    "references": len(self._references),
                    "accepted_twice": sum(1 for n in self._references.values() if n > 1),
                    **{f"accepted_{name}": n for name, n in self.accepted.items()},
                    **{f"stalled_{name}": n for name, n in self.stalled.items()},
                    **{f"after_outage_{name}": n for name, n in self.after_outage.items()},
                }
            return stats


GATEWAYS = {"/sms": "primary", "/backup/sms": "backup"}


def make_handler(
    mailbox: Mailbox, secret: bytes | None, stall_s: float = 5.0
) -> type[BaseHTTPRequestHandler]:
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
            url = urlparse(self.path)
            if url.path == "/control":
                query = parse_qs(url.query)
                named, state = query.get("gateway", [""])[0], query.get("state", [""])[0]
                if named not in GATEWAYS.values() or state not in ("up", "down"):
                    return self._reply(400, {"error": "gateway=primary|backup&state=up|down"})
                mailbox.set_state(named, state)
                return self._reply(200, {"down": sorted(mailbox.down)})
            found = GATEWAYS.get(url.path)
            if found is None:
                return self._reply(404)
            gateway = found
            if gateway in mailbox.down:
                # A hung gateway: no answer within the provider's timeout, nothing delivered.
                mailbox.stalled[gateway] += 1
                time.sleep(stall_s)
                self.close_connection = True
                return None
            if secret is not None:
                expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
                given = self.headers.get("X-Authsvc-Signature", "")
                if not hmac.compare_digest(expected, given):
                    mailbox.rejected += 1
                    return self._reply(401, {"error": "bad signature"})
            try:
                message = json.loads(body)
                with_code = mailbox.put(str(message["to"]), str(message["text"]))
            except (ValueError, KeyError, TypeError):
                mailbox.rejected += 1
                return self._reply(400, {"error": "bad message"})
            reference = str(message.get("reference", ""))
            if with_code:  # the books count codes: a notice is not one
                mailbox.accept(gateway, reference)
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
    port: int,
    *,
    secret: bytes | None = None,
    tail_file: Path | None = None,
    stall_s: float = 5.0,
) -> tuple[ThreadingHTTPServer, Mailbox, threading.Event]:
    """Start the sink in background threads; returns (server, mailbox, stop event)."""
    mailbox = Mailbox()
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(mailbox, secret, stall_s))
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
    parser.add_argument(
        "--stall-s", type=float, default=5.0, help="how long a down gateway holds a request"
    )
    args = parser.parse_args()
    server, _, stop = serve(
        args.port,
        secret=args.hmac_secret.encode() if args.hmac_secret else None,
        tail_file=args.tail,
        stall_s=args.stall_s,
    )
    if args.port_file:
        args.port_file.write_text(str(server.server_address[1]))
    # Bounded: the sink never outlives a forgotten load test by more than --max-seconds.
    stop.wait(args.max_seconds)
    stop.set()
    server.shutdown()


if __name__ == "__main__":
    main()
