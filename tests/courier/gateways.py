"""Real gateways that the courier tests start on loopback ports: an HTTP server (stdlib, in a
thread) and an SMTP server (aiosmtpd, STARTTLS or TLS, with authentication). Each answers as the
test scripts it: "ok", "permanent", "transient", "rate" (HTTP 429) or "hang" (answers too late),
or, as many real gateways do, an error that quotes what it was sent: "echo" (refused for good) and
"echo-transient" (to be retried). The HTTP server also answers GET (Kannel's sendsms interface),
echoing the query string as sent, percent-encoded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HANG_S = 2.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Script:
    """What a gateway answers, one outcome per request; "ok" once the script runs out."""

    def __init__(self) -> None:
        self._outcomes: deque[str] = deque()
        self._lock = threading.Lock()

    def set(self, *outcomes: str) -> None:
        with self._lock:
            self._outcomes = deque(outcomes)

    def next(self) -> str:
        with self._lock:
            return self._outcomes.popleft() if self._outcomes else "ok"


# ---- HTTP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpGatewayServer:
    def __init__(self) -> None:
        self.script = Script()
        self.requests: list[HttpRequest] = []
        # Called in the request's thread once an accepted request has been answered.
        self.on_accepted: Callable[[HttpRequest], None] | None = None
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                request = HttpRequest(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                gateway.requests.append(request)
                outcome = gateway.script.next()
                if outcome == "hang":
                    time.sleep(HANG_S)
                # What it was sent, quoted back: the JSON body, or the query string of a GET.
                echoed = body.decode(errors="replace") or self.path
                answer: dict[str, str] | str
                status, answer = {
                    "ok": (200, {"id": f"gw-{len(gateway.requests)}"}),
                    "hang": (200, {"id": "late"}),
                    "permanent": (400, {"error": "invalid destination +33 6 12 34 56 78"}),
                    "transient": (503, {"error": "try later"}),
                    "rate": (429, {"error": "slow down"}),
                    "echo": (400, {"error": f"message refused: {echoed}"}),
                    "echo-transient": (503, {"error": f"queue full, not sent: {echoed}"}),
                }[outcome]
                if self.command == "GET" and outcome == "ok":  # Kannel's answer
                    status, answer = 202, "0: Accepted for delivery"
                data = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up (a timeout test)
                    self.wfile.write(data)
                    self.wfile.flush()
                if gateway.on_accepted is not None and status < 300:
                    gateway.on_accepted(request)  # e.g. post a delivery receipt back

            do_POST = _handle
            do_PUT = _handle
            do_GET = _handle

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/send"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def __enter__(self) -> HttpGatewayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---- SMTP ---------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key: the test's own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authsvc test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: Message


SMTP_USER = "authsvc"
SMTP_PASSWORD = "smtp-secret"


def _plain_text(content: bytes) -> str:
    for part in message_from_bytes(content).walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode(part.get_content_charset() or "utf-8")
    return ""


class _Handler:
    def __init__(self, gateway: SmtpGatewayServer) -> None:
        self._gateway = gateway

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        import asyncio

        outcome = self._gateway.script.next()
        if outcome == "hang":
            await asyncio.sleep(HANG_S)
        if outcome == "permanent":
            return "550 5.1.1 mailbox unavailable"
        if outcome in ("transient", "rate"):
            return "451 4.3.0 try again later"
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        if outcome.startswith("echo"):  # a content filter quoting the recipient and the text
            # One line, ASCII (an SMTP reply): the code and the address survive as they are.
            quoted = " ".join(_plain_text(content).split()).encode("ascii", "replace").decode()
            code = "550 5.7.1" if outcome == "echo" else "451 4.7.1"
            return f"{code} <{envelope.rcpt_tos[0]}> refused: {quoted}"
        self._gateway.mails.append(
            Mail(
                str(envelope.mail_from),
                [str(r) for r in envelope.rcpt_tos],
                message_from_bytes(content),
            )
        )
        return "250 2.0.0 queued"


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok)


class SmtpGatewayServer:
    """aiosmtpd, requiring authentication over TLS: STARTTLS, or TLS from the first byte."""

    def __init__(self, cert: Path, key: Path, *, implicit_tls: bool = False) -> None:
        self.script = Script()
        self.mails: list[Mail] = []
        self.port = free_port()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        common: dict[str, Any] = {
            "hostname": "127.0.0.1",
            "port": self.port,
            "authenticator": _authenticate,
            "auth_require_tls": True,
            "ready_timeout": 5.0,
        }
        if implicit_tls:
            self._controller = Controller(_Handler(self), ssl_context=context, **common)
        else:
            self._controller = Controller(
                _Handler(self), tls_context=context, require_starttls=True, **common
            )

    def __enter__(self) -> SmtpGatewayServer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()
