"""The `authsvc` command: serve, migrate, bootstrap, client, dev-run, audit export, ..."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_status import rpc_status
from pydantic import ValidationError

from authsvc import audit_cli, campaign_cli, log, providers_cli, security_cli
from authsvc.config import ProviderName, Settings, describe_refusal
from authsvc.errors import Failure

DEMO_SIRET = "21180001500011"
DEMO_LOGIN = "admin"
DEMO_PASSWORD = "demo-Bourges-2026!"  # noqa: S105 (the development demo, printed by make run)
CLIENT_STATE = Path("var/client.json")


def _settings(**overrides: Any) -> Settings:
    """The settings; a refused one stops the command with one line per setting, no traceback."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        for line in describe_refusal(error):
            print(line, file=sys.stderr)
        raise SystemExit(2) from None


def cmd_migrate(settings: Settings) -> int:
    from authsvc.db.migrate import upgrade

    upgrade(settings.database_url)
    print("database migrated", file=sys.stderr)
    return 0


def cmd_check_consistency(settings: Settings, as_json: bool) -> int:
    """Every invariant of authsvc/db/consistency.py counted; 1 when any row breaks one."""
    from authsvc.db import consistency
    from authsvc.db.engine import create_engine

    caps = consistency.Caps(
        max_code_attempts=settings.max_code_attempts,
        max_sends_per_flow=settings.max_sends_per_flow,
    )

    async def run() -> list[consistency.Finding]:
        engine = create_engine(settings.database_url)
        try:
            return await consistency.scan(engine, caps)
        finally:
            await engine.dispose()

    findings = asyncio.run(run())
    broken = consistency.violations(findings)
    if as_json:
        counts = {finding.invariant.name: finding.count for finding in findings}
        print(json.dumps({"violations": len(broken), "counts": counts}))
    else:
        for finding in findings:
            mark = "FAIL" if finding.count else "ok"
            print(
                f"{mark:4}  {finding.count:>8}  {finding.invariant.name}: {finding.invariant.says}"
            )
        print(f"{len(broken)} of {len(findings)} invariants broken", file=sys.stderr)
    return 1 if broken else 0


async def _bootstrap(
    settings: Settings,
    *,
    siret: str,
    name: str,
    login: str,
    email: str,
    phone: str,
    display_name: str,
    password: str,
) -> None:
    from authsvc.accounts import create_account, create_organization
    from authsvc.app import App
    from authsvc.db import Role

    app = App.build(settings)
    try:
        password_hash = await app.passwords.hash_async(password)
        async with app.write() as db:
            organization = await create_organization(app, db, siret=siret, name=name)
            await db.flush()
            await create_account(
                app,
                db,
                organization_id=organization.id,
                login=login,
                display_name=display_name,
                email=email,
                phone=phone,
                role=Role.ADMIN,
                password_hash=password_hash,
            )
    finally:
        await app.close()


def _password(prompt: str, env: str) -> str:
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise SystemExit(f"set {env} or run interactively to enter the password")
    return getpass.getpass(prompt)


def cmd_bootstrap(settings: Settings, args: argparse.Namespace) -> int:
    from authsvc import validation

    password = _password("administrator password: ", "AUTHSVC_BOOTSTRAP_PASSWORD")
    try:
        validation.password(password)
        asyncio.run(
            _bootstrap(
                settings,
                siret=args.org_siret,
                name=args.org_name,
                login=args.admin_login,
                email=args.admin_email,
                phone=args.admin_phone,
                display_name=args.admin_name or args.admin_login,
                password=password,
            )
        )
    except Failure as failure:
        field = failure.metadata.get("field", "")
        print(
            f"bootstrap refused: {field + ': ' if field else ''}{failure.message}", file=sys.stderr
        )
        return 2
    print(
        f"organisation {args.org_siret} and administrator {args.admin_login} created",
        file=sys.stderr,
    )
    return 0


def cmd_serve(settings: Settings, listen: str | None, workers: int = 1) -> int:
    if workers > 1:
        from authsvc.workers import serve_workers

        return serve_workers(settings, listen, workers)
    from authsvc import eventloop
    from authsvc.server import serve

    eventloop.run(serve(settings, listen), use_uvloop=settings.uvloop)
    return 0


def cmd_seed(settings: Settings, args: argparse.Namespace) -> int:
    """Test organisations and accounts for load tests (development databases only)."""
    from authsvc.app import App
    from authsvc.seeding import seed

    async def run() -> Any:
        app = App.build(settings)
        try:
            return await seed(app, orgs=args.orgs, accounts=args.accounts, start=args.start)
        finally:
            await app.close()

    try:
        report = asyncio.run(run())
    except (RuntimeError, ValueError) as error:
        print(f"seed refused: {error}", file=sys.stderr)
        return 2
    print(
        f"seeded {report.organizations} organisations and {report.accounts} accounts "
        f"in {report.seconds:.1f} s",
        file=sys.stderr,
    )
    return 0


async def _dispatch(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Drain the outbox until SIGTERM/SIGINT (or `stop`): the dispatcher without the API, and
    the audit webhook sink beside it when AUTHSVC_AUDIT_WEBHOOK_URL is set."""
    import signal

    import structlog

    from authsvc.app import App
    from authsvc.courier.dispatcher import Dispatcher

    logger = structlog.get_logger("authsvc.dispatch")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    from authsvc import metrics

    app = App.build(settings)
    exposition = metrics.serve_http(settings.metrics_listen) if settings.metrics_listen else None
    try:
        logger.info(
            "dispatching",
            environment=settings.environment.value,
            metrics_port=exposition.port if exposition else None,
            audit_webhook=settings.audit_webhook_url is not None,
        )
        loops = [Dispatcher(app).run(stop)]
        if settings.audit_webhook_url is not None:
            from authsvc.courier.audit_webhook import AuditWebhook

            loops.append(AuditWebhook(app).run(stop))
        if settings.voice_fallback_after_s > 0:
            from authsvc.flows.voice_fallback import VoiceFallback

            loops.append(VoiceFallback(app).run(stop))
        await asyncio.gather(*loops)
        logger.info("stopped")
    finally:
        if exposition is not None:
            exposition.close()
            metrics.stop_recording()
        await app.close()


def cmd_dispatch(settings: Settings) -> int:
    from authsvc import eventloop

    eventloop.run(_dispatch(settings), use_uvloop=settings.uvloop)
    return 0


def cmd_dev_run(args: argparse.Namespace) -> int:
    """`make run`: migrate the SQLite database, create the demo organisation once, serve."""
    overrides: dict[str, Any] = {}
    if "AUTHSVC_FEDERATION_ISSUERS" not in os.environ:
        # The development issuer, so that a federated login can be tried locally.
        from authsvc.federation import devidp

        jwks = DEV_IDP_DIR / devidp.JWKS
        if not jwks.exists():
            devidp.keygen(DEV_IDP_DIR)
        overrides["federation_issuers"] = _dev_issuer_config(jwks)
    settings = _settings(
        sms_provider=os.environ.get("AUTHSVC_SMS_PROVIDER", ProviderName.CONSOLE),
        voice_provider=os.environ.get("AUTHSVC_VOICE_PROVIDER", ProviderName.CONSOLE),
        email_provider=os.environ.get("AUTHSVC_EMAIL_PROVIDER", ProviderName.CONSOLE),
        **overrides,
    )
    if settings.environment.value != "development":
        raise SystemExit("dev-run is for development only")
    cmd_migrate(settings)
    key_note = security_cli.ensure_dev_key(settings)
    try:
        asyncio.run(
            _bootstrap(
                settings,
                siret=DEMO_SIRET,
                name="Mairie de démonstration",
                login=DEMO_LOGIN,
                email="admin@demo.example",
                phone="+33612345678",
                display_name="Admin Démo",
                password=DEMO_PASSWORD,
            )
        )
    except Failure as failure:
        if failure.reason != "ALREADY_EXISTS":
            raise
    print(
        "\n  Demo organisation SIRET : "
        + DEMO_SIRET
        + "\n  Administrator login     : "
        + DEMO_LOGIN
        + "\n  Password                : "
        + DEMO_PASSWORD
        + "\n"
        + key_note
        + "  Codes are printed below (console provider).\n"
        + "  In another terminal:  .venv/bin/authsvc client login\n",
        file=sys.stderr,
    )
    return cmd_serve(settings, args.listen)


# ---- readiness and import ---------------------------------------------------------------


async def _readiness(settings: Settings, siret: str) -> tuple[str, Any]:
    from sqlalchemy import select

    from authsvc.accounts.directory import readiness
    from authsvc.app import App
    from authsvc.db import Organization

    app = App.build(settings)
    try:
        async with app.read() as db:
            organization = await db.scalar(select(Organization).where(Organization.siret == siret))
        if organization is None:
            raise SystemExit(f"no organisation {siret}")
        return organization.name, await readiness(app, organization.id)
    finally:
        await app.close()


async def _report(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from authsvc.app import App
    from authsvc.campaigns import relays, report

    app = App.build(settings)
    try:
        organization = await relays.organization_by_siret(app, args.relay or args.org)
        if args.org:
            return await report.organization_report(app, organization)
        async with app.read() as db:
            if not await relays.is_relay(db, organization.id):
                raise relays.not_a_relay()
        return await report.relay_report(app, organization)
    finally:
        await app.close()


def _write(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def cmd_readiness(settings: Settings, args: argparse.Namespace) -> int:
    """What an organisation (or a relay's members) must fix before enforcement: a table, CSV,
    JSON, or a self-contained HTML page with progress bars and the daily trend."""
    import csv
    import dataclasses

    if args.format == "html" or args.relay:
        from authsvc.campaigns import report_html

        try:
            data = asyncio.run(_report(settings, args))
        except Failure as failure:
            print(f"refused: {failure.message} ({failure.reason})", file=sys.stderr)
            return 2
        if args.format == "html":
            _write(report_html.render(data), args.output)
        elif args.format == "json":
            _write(json.dumps(data, ensure_ascii=False, indent=2) + "\n", args.output)
        elif args.format == "table":
            lines = [
                data["title"],
                "  siret           ready/total  admins ready  emails  app*  passkey*  name",
            ]
            lines += [
                f"  {o['siret']}  {o['ready']:>5}/{o['accounts_total']:<5}  "
                f"{o['ready_administrators']:>12}  {o['campaign']['emails_sent']:>6}  "
                f"{o['other_factors']['with_authenticator_app']:>4}  "
                f"{o['other_factors']['with_passkey']:>8}  {o['name']}"
                + ("  (no administrator can act)" if o["without_ready_administrator"] else "")
                for o in data["organizations"]
            ]
            lines += [
                "  * accounts with an authenticator app, with a passkey: information, not part "
                "of readiness"
            ]
            _write("\n".join(lines) + "\n", args.output)
        else:
            print("a relay's report: --format table, json or html", file=sys.stderr)
            return 2
        return 0
    name, report = asyncio.run(_readiness(settings, args.org))
    counts = {k: v for k, v in dataclasses.asdict(report).items() if k != "issues"}
    others = counts.pop("other_factors")  # information, shown apart: not part of readiness
    issues = [
        {
            "account_id": str(i.account_id),
            "login": i.login,
            "display_name": i.display_name,
            "issue": i.issue,
            "other_factors": list(i.other_factors),
        }
        for i in report.issues
    ]
    if args.format == "json":
        print(
            json.dumps(
                {
                    "organization": name,
                    "siret": args.org,
                    **counts,
                    "other_factors": others,
                    "accounts": issues,
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    elif args.format == "csv":
        writer = csv.DictWriter(
            sys.stdout,
            fieldnames=["account_id", "login", "display_name", "issue", "other_factors"],
        )
        writer.writeheader()
        writer.writerows({**i, "other_factors": " ".join(i["other_factors"])} for i in issues)
    else:
        print(f"{name} ({args.org})")
        for key, value in counts.items():
            print(f"  {key.replace('_', ' '):<26} {value}")
        print("  other factors (information, not part of readiness)")
        for key, value in others.items():
            print(f"    {key.replace('_', ' '):<24} {value}")
        if issues:
            print("\n  login                  issue               other factors")
            for issue in issues:
                others_of = " ".join(issue["other_factors"])
                print(f"  {issue['login']:<22} {issue['issue']:<19} {others_of}")
    return 0


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    from authsvc.accounts.importer import import_rows, read_csv
    from authsvc.app import App

    async def run() -> Any:
        app = App.build(settings)
        try:
            return await import_rows(app, args.org, read_csv(args.file))
        finally:
            await app.close()

    try:
        report = asyncio.run(run())
    except Failure as failure:
        print(f"import refused: {failure.message}", file=sys.stderr)
        return 2
    print(
        f"imported: {report.imported}, not ready: {len(report.not_ready)}, "
        f"rejected: {len(report.rejected)}"
    )
    for line, login, why in report.not_ready:
        print(f"  not ready  line {line}: {login}: {why}")
    for line, login, why in report.rejected:
        print(f"  rejected   line {line}: {login}: {why}")
    return 1 if report.rejected else 0


# ---- development issuer ----------------------------------------------------------------------

DEV_IDP_DIR = Path("var/dev-idp")


def cmd_dev_idp(args: argparse.Namespace) -> int:
    from authsvc.federation import devidp

    directory = Path(args.dir)
    if args.action == "keygen":
        private, jwks = devidp.keygen(directory)
        print(f"key: {private}\nJWKS: {jwks}", file=sys.stderr)
        print(json.dumps(_dev_issuer_config(jwks)))
        return 0
    print(
        devidp.mint(
            directory, subject=args.sub, siret=args.siret, ttl_s=args.ttl, audience=args.aud
        )
    )
    return 0


def _dev_issuer_config(jwks: Path) -> list[dict[str, str]]:
    from authsvc.config import DEV_ISSUER

    return [{"issuer": DEV_ISSUER, "jwks_file": str(jwks.resolve())}]


# ---- client -------------------------------------------------------------------------------


def _load_state() -> dict[str, str]:
    return json.loads(CLIENT_STATE.read_text()) if CLIENT_STATE.exists() else {}


def _save_state(state: dict[str, str]) -> None:
    CLIENT_STATE.parent.mkdir(parents=True, exist_ok=True)
    CLIENT_STATE.write_text(json.dumps(state, indent=2))
    CLIENT_STATE.chmod(0o600)  # it holds the session and device tokens


def _show(message: Any) -> None:
    # UTF-8 as is: masked numbers read "+33 6 •• •• •• 78", not "\\u2022" escapes.
    print(json_format.MessageToJson(message, preserving_proto_field_name=True, ensure_ascii=False))


def cmd_client(args: argparse.Namespace) -> int:
    from authsvc.v1 import auth_service_pb2 as pb
    from authsvc.v1 import auth_service_pb2_grpc as pb_grpc
    from authsvc.v1 import common_pb2

    state = _load_state()
    client = common_pb2.ClientContext(ip_address="127.0.0.1", user_agent="authsvc-cli")
    with grpc.insecure_channel(args.server) as plain:
        channel = security_cli.with_api_key(plain)  # the backend's API key (make run's dev key)
        stub = pb_grpc.AuthServiceStub(channel)
        try:
            if args.action == "login":
                password = _password("password: ", "AUTHSVC_CLIENT_PASSWORD")
                response = stub.Login(
                    pb.LoginRequest(
                        organization_siret=args.org,
                        login=args.login,
                        password=pb.PasswordCredential(password=password),
                        device_token=state.get("device_token", ""),
                        client=client,
                    )
                )
                if response.HasField("session"):
                    state["session_token"] = response.session.token
                    print("trusted device: signed in without a code", file=sys.stderr)
                else:
                    state["flow_id"] = response.pending_flow.flow_id
                    print("a code is required: run `authsvc client challenge`", file=sys.stderr)
                _show(response)
            elif args.action == "federated-login":
                response = stub.Login(
                    pb.LoginRequest(
                        federated=pb.FederatedCredential(assertion=args.assertion),
                        device_token=state.get("device_token", ""),
                        client=client,
                    )
                )
                if response.HasField("session"):
                    state["session_token"] = response.session.token
                else:
                    state["flow_id"] = response.pending_flow.flow_id
                    print("a code is required: run `authsvc client challenge`", file=sys.stderr)
                _show(response)
            elif args.action == "link":
                from authsvc.v1 import account_service_pb2 as apb
                from authsvc.v1 import account_service_pb2_grpc as apb_grpc

                linking = apb_grpc.AccountServiceStub(channel).LinkFederatedIdentity(
                    apb.LinkFederatedIdentityRequest(
                        session_token=state.get("session_token", ""),
                        assertion=args.assertion,
                        client=client,
                    )
                )
                state["flow_id"] = linking.pending_flow.flow_id
                print("a code is required: run `authsvc client challenge`", file=sys.stderr)
                _show(linking)
            elif args.action == "challenge":
                channel_value = {
                    "sms": common_pb2.CHANNEL_SMS,
                    "voice": common_pb2.CHANNEL_VOICE,
                    "totp": common_pb2.CHANNEL_TOTP,  # nothing sent: the app's code
                }
                _show(
                    stub.Challenge(
                        pb.ChallengeRequest(
                            flow_id=args.flow or state.get("flow_id", ""),
                            channel=channel_value.get(
                                args.channel or "", common_pb2.CHANNEL_UNSPECIFIED
                            ),
                            client=client,
                        )
                    )
                )
            elif args.action == "verify":
                verified = stub.Verify(
                    pb.VerifyRequest(
                        flow_id=args.flow or state.get("flow_id", ""),
                        code=args.code,
                        client=client,
                    )
                )
                if verified.HasField("login"):
                    state["session_token"] = verified.login.session.token
                    state["device_token"] = verified.login.device_token
                if verified.HasField("action_grant"):
                    state["grant_token"] = verified.action_grant.grant_token
                _show(verified)
            elif args.action == "step-up":
                opened = stub.AuthorizeSensitiveAction(
                    pb.AuthorizeSensitiveActionRequest(
                        session_token=state.get("session_token", ""),
                        action=common_pb2.SensitiveAction.Value(
                            _STEP_UP_ACTIONS[args.sensitive_action]
                        ),
                        # remove-factor names the factor: the grant removes that one only.
                        new_values=(
                            pb.ActionValues(factor_id=args.factor)
                            if args.factor is not None
                            else pb.ActionValues()
                        ),
                        client=client,
                    )
                )
                state["flow_id"] = opened.pending_flow.flow_id
                print("a code is required: run `authsvc client challenge`", file=sys.stderr)
                _show(opened)
            elif args.action in ("totp-enrol", "totp-confirm"):
                _totp(args, state, channel, client)
            elif args.action == "remove-factor":
                _remove_factor(args, state, channel)
            elif args.action == "whoami":
                _show(
                    stub.ValidateSession(
                        pb.ValidateSessionRequest(
                            session_token=state.get("session_token", ""),
                            client=client,
                        )
                    )
                )
            elif args.action == "logout":
                stub.Logout(
                    pb.LogoutRequest(
                        session_token=state.pop("session_token", ""),
                        client=client,
                    )
                )
                print("signed out", file=sys.stderr)
        except grpc.RpcError as error:
            _print_rpc_error(error)
            return 1
        finally:
            _save_state(state)
    return 0


_STEP_UP_ACTIONS = {
    "enrol-factor": "SENSITIVE_ACTION_ENROLL_FACTOR",
    "remove-factor": "SENSITIVE_ACTION_REMOVE_FACTOR",
}


def _totp(args: argparse.Namespace, state: dict[str, str], channel: Any, client: Any) -> None:
    """Enrol an authenticator app with the grant of `step-up enrol-factor` (its URI and QR
    code printed in the terminal), then confirm it with the app's first code."""
    import segno

    from authsvc.v1 import factor_service_pb2 as fpb
    from authsvc.v1 import factor_service_pb2_grpc as fpb_grpc

    factors = fpb_grpc.FactorServiceStub(channel)
    if args.action == "totp-enrol":
        begun = factors.BeginTotpEnrollment(
            fpb.BeginTotpEnrollmentRequest(
                session_token=state.get("session_token", ""),
                grant_token=state.pop("grant_token", ""),
                name=args.name,
            )
        )
        state["factor_id"] = begun.factor_id
        segno.make(begun.otpauth_uri, error="m").terminal(compact=True)
        print(begun.otpauth_uri)
        print(f"secret (manual entry): {begun.secret_base32}")
        print("scan it, then run `authsvc client totp-confirm CODE`", file=sys.stderr)
        return
    confirmed = factors.ConfirmTotpEnrollment(
        fpb.ConfirmTotpEnrollmentRequest(
            session_token=state.get("session_token", ""),
            factor_id=args.factor or state.get("factor_id", ""),
            code=args.code,
            client=client,
        )
    )
    _show(confirmed)


def _remove_factor(args: argparse.Namespace, state: dict[str, str], channel: Any) -> None:
    """Remove a factor with the grant of `step-up remove-factor --factor ID` (made for it)."""
    from authsvc.v1 import factor_service_pb2 as fpb
    from authsvc.v1 import factor_service_pb2_grpc as fpb_grpc

    removed = fpb_grpc.FactorServiceStub(channel).RemoveFactor(
        fpb.RemoveFactorRequest(
            session_token=state.get("session_token", ""),
            grant_token=state.pop("grant_token", ""),
            factor_id=args.factor,
        )
    )
    _show(removed)


def _print_rpc_error(error: grpc.RpcError) -> None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    from google.rpc import error_details_pb2

    reason = ""
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                extra = f" {dict(info.metadata)}" if info.metadata else ""
                reason = f" [{info.reason}{extra}]"
    print(f"error: {error.code().name}{reason}: {error.details()}", file=sys.stderr)


# ---- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authsvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the gRPC API")
    serve.add_argument("--listen", help="HOST:PORT (default AUTHSVC_LISTEN or 127.0.0.1:50051)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port (SO_REUSEPORT); the dispatcher runs once, in the parent",
    )

    seed = commands.add_parser("seed", help="test organisations and accounts (load tests)")
    seed.add_argument("--orgs", type=int, default=100, help="organisations")
    seed.add_argument("--accounts", type=int, default=10_000, help="accounts, over all orgs")
    seed.add_argument("--start", type=int, default=0, help="index of the first account")

    commands.add_parser("migrate", help="create or upgrade the database schema")

    check = commands.add_parser(
        "check-consistency",
        help="count rows that a half-written decision would leave (exit 1 if any)",
    )
    check.add_argument("--json", action="store_true", help="one JSON object on stdout")

    commands.add_parser(
        "dispatch", help="deliver queued messages without serving the API (scale delivery apart)"
    )

    bootstrap = commands.add_parser("bootstrap", help="create an organisation and its first admin")
    bootstrap.add_argument("--org-siret", required=True)
    bootstrap.add_argument("--org-name", required=True)
    bootstrap.add_argument("--admin-login", required=True)
    bootstrap.add_argument("--admin-email", required=True)
    bootstrap.add_argument("--admin-phone", required=True)
    bootstrap.add_argument("--admin-name")

    readiness = commands.add_parser("readiness", help="which accounts are not ready")
    scope = readiness.add_mutually_exclusive_group(required=True)
    scope.add_argument("--org", help="organisation SIRET")
    scope.add_argument("--relay", help="a relay's SIRET: its members, those in need first")
    readiness.add_argument("--format", choices=["table", "csv", "json", "html"], default="table")
    readiness.add_argument("--output", "-o", help="write to this file instead of stdout")

    importer = commands.add_parser("import-accounts", help="import accounts from a CSV file")
    importer.add_argument("file", help="CSV: login,display_name,email,phone[,role]")
    importer.add_argument("--org", required=True, help="organisation SIRET")

    dev_idp = commands.add_parser("dev-idp", help="a development federated issuer")
    dev_idp.add_argument("--dir", default=str(DEV_IDP_DIR))
    idp_actions = dev_idp.add_subparsers(dest="action", required=True)
    idp_actions.add_parser("keygen", help="a new key; prints AUTHSVC_FEDERATION_ISSUERS")
    mint = idp_actions.add_parser("mint", help="print a signed assertion")
    mint.add_argument("--sub", required=True)
    mint.add_argument("--siret", required=True)
    mint.add_argument("--ttl", type=int, default=120)
    mint.add_argument("--aud", default="authsvc")

    security_cli.add_parsers(commands)  # backend, breaker, unlock
    campaign_cli.add_parsers(commands)  # relay, campaign
    audit_cli.add_parsers(commands)  # audit export
    providers_cli.add_parsers(commands)  # providers status
    dev_run = commands.add_parser("dev-run", help="migrate, create the demo org, serve (make run)")
    dev_run.add_argument("--listen")

    client = commands.add_parser("client", help="walk the login flow against a running server")
    client.add_argument("--server", default="127.0.0.1:50051")
    actions = client.add_subparsers(dest="action", required=True)
    login = actions.add_parser(
        "login", help="first factor (password from a prompt or AUTHSVC_CLIENT_PASSWORD)"
    )
    login.add_argument("--org", default=DEMO_SIRET, help="organisation SIRET")
    login.add_argument("--login", default=DEMO_LOGIN)
    challenge = actions.add_parser("challenge", help="send the code")
    challenge.add_argument("--flow")
    challenge.add_argument("--channel", choices=["sms", "voice", "totp"])
    verify = actions.add_parser("verify", help="enter the code")
    verify.add_argument("code")
    verify.add_argument("--flow")
    federated_login = actions.add_parser(
        "federated-login", help="first factor with an assertion (see `authsvc dev-idp mint`)"
    )
    federated_login.add_argument("assertion")
    link = actions.add_parser("link", help="link the assertion's identity to your account")
    link.add_argument("assertion")
    stepping = actions.add_parser("step-up", help="open a step-up flow (a fresh code, a grant)")
    stepping.add_argument("sensitive_action", choices=sorted(_STEP_UP_ACTIONS))
    stepping.add_argument(
        "--factor", help="remove-factor: the factor's id (ListFactors), which the grant names"
    )
    enrol = actions.add_parser(
        "totp-enrol", help="enrol an authenticator app (after `step-up enrol-factor`)"
    )
    enrol.add_argument("--name", default="Authenticator")
    confirm = actions.add_parser("totp-confirm", help="confirm the app with its first code")
    confirm.add_argument("code")
    confirm.add_argument("--factor")
    remove = actions.add_parser(
        "remove-factor", help="remove a factor (after `step-up remove-factor --factor ID`)"
    )
    remove.add_argument("factor", help="the factor's id (the one the grant was made for)")
    actions.add_parser("whoami", help="validate the current session")
    actions.add_parser("logout", help="revoke the current session")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "client":
        raise SystemExit(cmd_client(args))
    if args.command == "dev-idp":
        raise SystemExit(cmd_dev_idp(args))
    if args.command == "dev-run":
        log.configure()
        raise SystemExit(cmd_dev_run(args))
    settings = _settings()
    log.configure(settings.log_format, settings.log_level)
    if args.command == "serve":
        raise SystemExit(cmd_serve(settings, args.listen, args.workers))
    if args.command == "seed":
        raise SystemExit(cmd_seed(settings, args))
    if args.command == "migrate":
        raise SystemExit(cmd_migrate(settings))
    if args.command == "dispatch":
        raise SystemExit(cmd_dispatch(settings))
    if args.command == "check-consistency":
        raise SystemExit(cmd_check_consistency(settings, args.json))
    if args.command == "bootstrap":
        raise SystemExit(cmd_bootstrap(settings, args))
    if args.command == "readiness":
        raise SystemExit(cmd_readiness(settings, args))
    if args.command == "import-accounts":
        raise SystemExit(cmd_import(settings, args))
    done = security_cli.run(settings, args)
    if done is None:
        done = campaign_cli.run(settings, args)
    if done is None:
        done = audit_cli.run(settings, args)
    if done is None:
        done = providers_cli.run(settings, args)
    raise SystemExit(2 if done is None else done)
