"""Operator commands of the abuse defences, wired into `authsvc` (cli.py):

- `authsvc backend add NAME --rpcs Login,Challenge,... [--credentials key|mtls|both]` (prints
  the API key once; `--credentials mtls` (or `--mtls`) for a backend that authenticates by
  client certificate only, `both` for either; default: key only), `backend list`, `backend revoke`;
- `authsvc breaker list [--all]`, `authsvc breaker reset PREFIX|--all` (SMS pumping breakers);
- `authsvc unlock --org SIRET --login LOGIN` (clears an account's password and code lockouts,
  including the hard bound of 100 wrong codes; an `account.unlocked` audit row says so).

And the development key of `make run`: created in var/dev-backend.key, read by `authsvc client`
(or AUTHSVC_CLIENT_API_KEY).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from authsvc.config import Settings

DEV_KEY_FILE = Path("var/dev-backend.key")
DEV_BACKEND = "dev"
T = TypeVar("T")


def add_parsers(commands: Any) -> None:
    backend = commands.add_parser("backend", help="backends allowed to call (API keys, mTLS)")
    backend_actions = backend.add_subparsers(dest="action", required=True)
    add = backend_actions.add_parser("add", help="add or replace a backend; prints its key once")
    add.add_argument("name")
    add.add_argument(
        "--rpcs", required=True, help='comma-separated: "*", "AuthService/*", "Login", ...'
    )
    add.add_argument(
        "--credentials",
        choices=("key", "mtls", "both"),
        default=None,
        help="what names the backend: its API key (default), a client certificate whose "
        "identity is NAME (mtls), or either (both)",
    )
    add.add_argument("--mtls", action="store_true", help="same as --credentials mtls")
    backend_actions.add_parser("list", help="the backends and their RPCs")
    revoke = backend_actions.add_parser("revoke", help="revoke a backend")
    revoke.add_argument("name")

    breaker = commands.add_parser("breaker", help="SMS pumping breakers per number prefix")
    breaker_actions = breaker.add_subparsers(dest="action", required=True)
    listing = breaker_actions.add_parser("list", help="open breakers")
    listing.add_argument("--all", action="store_true", help="closed ones too")
    reset = breaker_actions.add_parser("reset", help="close a breaker (fresh send budget)")
    reset.add_argument("prefix", nargs="?")
    reset.add_argument("--all", action="store_true")

    unlock = commands.add_parser("unlock", help="clear an account's lockouts")
    unlock.add_argument("--org", required=True, help="organisation SIRET")
    unlock.add_argument("--login", required=True)


def _with_app(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from authsvc.app import App

    async def run() -> T:
        app = App.build(settings)
        try:
            return await work(app)
        finally:
            await app.close()

    return asyncio.run(run())


def run(settings: Settings, args: argparse.Namespace) -> int | None:
    """Run one of these commands; None when `args` names another one."""
    from authsvc.api import callers
    from authsvc.policies import lockout, pumping

    if args.command == "backend" and args.action == "add":
        rpcs = [part for part in args.rpcs.split(",") if part.strip()]
        if args.mtls and args.credentials not in (None, "mtls"):
            print("backend refused: --mtls contradicts --credentials", file=sys.stderr)
            return 2
        accepted = "mtls" if args.mtls else (args.credentials or "key")
        try:
            callers.normalise_rpcs(rpcs)
        except ValueError as error:
            print(f"backend refused: {error}", file=sys.stderr)
            return 2
        key = _with_app(
            settings,
            lambda app: callers.register_backend(app, args.name, rpcs, credentials=accepted),
        )
        certificate = f"; mTLS: certificate identity {args.name!r}" if accepted != "key" else ""
        if key is None:
            print(f"backend {args.name} added (credentials: {accepted}{certificate})")
        else:
            print(f"backend {args.name} added (credentials: {accepted}{certificate}).")
            print(f"Its API key, shown only this once:\n{key}")
            print("send it as metadata  authorization: Bearer <key>", file=sys.stderr)
        return 0
    if args.command == "backend" and args.action == "list":
        for backend in _with_app(settings, callers.list_backends):
            state = "revoked" if backend.revoked_at else "active"
            print(f"{backend.name:<24} {state:<8} {backend.credentials:<5} {backend.rpcs}")
        return 0
    if args.command == "backend" and args.action == "revoke":
        done = _with_app(settings, lambda app: callers.revoke_backend(app, args.name))
        print(f"backend {args.name} {'revoked' if done else 'not found'}")
        return 0 if done else 1
    if args.command == "breaker" and args.action == "list":
        rows = _with_app(settings, lambda app: pumping.list_breakers(app, include_closed=args.all))
        for row in rows:
            until = row.open_until.isoformat() if row.open_until else "closed"
            print(f"{row.prefix:<16} open until {until:<34} trips {row.trips}")
        if not rows:
            print("no open breaker", file=sys.stderr)
        return 0
    if args.command == "breaker" and args.action == "reset":
        if args.prefix is None and not args.all:
            print("name a prefix or --all", file=sys.stderr)
            return 2
        prefix = None if args.all else args.prefix
        count = _with_app(settings, lambda app: pumping.reset_breaker(app, prefix))
        print(f"{count} breaker(s) reset")
        return 0
    if args.command == "unlock":
        done = _with_app(settings, lambda app: lockout.unlock(app, args.org, args.login))
        print("unlocked" if done else "no such account", file=sys.stderr)
        return 0 if done else 1
    return None


def ensure_dev_key(settings: Settings) -> str:
    """`make run`: a development backend key in var/dev-backend.key, registered in the database."""
    from authsvc.api import callers

    if DEV_KEY_FILE.exists():
        key = DEV_KEY_FILE.read_text().strip()
    else:
        key = callers.new_key()
        DEV_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        DEV_KEY_FILE.write_text(key + "\n")
        DEV_KEY_FILE.chmod(0o600)
    _with_app(settings, lambda app: callers.register_key(app, DEV_BACKEND, key))
    return (
        f"  Backend API key        : in {DEV_KEY_FILE} (backend {DEV_BACKEND!r}, every RPC);\n"
        "                           `authsvc client` sends it (or AUTHSVC_CLIENT_API_KEY) as\n"
        "                           metadata  authorization: Bearer <key>\n"
    )


class _Bearer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, key: str) -> None:
        self._metadata = (("authorization", f"Bearer {key}"),)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), *self._metadata]
        return continuation(details._replace(metadata=metadata), request)


def with_api_key(channel: grpc.Channel) -> grpc.Channel:
    """`authsvc client`: send AUTHSVC_CLIENT_API_KEY, else the key of `make run`."""
    key = os.environ.get("AUTHSVC_CLIENT_API_KEY", "").strip()
    if not key and DEV_KEY_FILE.exists():
        key = DEV_KEY_FILE.read_text().strip()
    if not key:
        return channel
    return grpc.intercept_channel(channel, _Bearer(key))
