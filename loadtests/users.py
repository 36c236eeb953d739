"""The simulated people of the national peak, as Locust users over gRPC.

- TrustedDeviceUser: a browser that passed a code in the last 7 days; logs in with its password
  only (Login -> session), checks its session once (ValidateSession) and logs out.
- CodeLoginUser: a first login on an account never seen before: Login -> Challenge -> the code
  from the SMS sink -> Verify -> ValidateSession -> Logout.
- StepUpUser: a signed-in user changing their password: Login (trusted device) ->
  AuthorizeSensitiveAction -> Challenge -> code -> Verify (action grant) -> Logout.
- AbusiveUser: wrong passwords on one account, wrong codes on another; the refusals it provokes
  (INVALID_CREDENTIALS, CODE_MISMATCH, FLOW_FAILED, ACCOUNT_LOCKED, RESOURCE_EXHAUSTED ...) are
  expected and counted apart, never as failures; a wrong secret that is *accepted* is one.

Trusted-device and step-up users earn their device token once, in on_start, through a code
login whose calls are named "enroll: ..." so that the peak's own figures stay apart.

Accounts are those of `authsvc seed` (authsvc.seeding), split into pools so that users never
share one: trusted 40%, code 40%, step-up 15%, abuse 5% of LOADTEST_ACCOUNTS. Inside a pool,
Locust process `w` (its worker index) of LOADTEST_PROCESSES takes indices w, w + P, w + 2P ...
so that several processes (--processes, or workers on other machines: set LOADTEST_PROCESSES
to their total) never take the same account.

Parameters (environment, set by loadtests/run.py): LOADTEST_ACCOUNTS, LOADTEST_ORGS,
LOADTEST_SINK_URL, LOADTEST_MIX (weights "trusted,code,stepup,abuse", default 70,25,5,0),
LOADTEST_PACING_S (each user starts one journey every this many seconds, default 2),
LOADTEST_PASSWORD (default: the seed password).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import gevent  # type: ignore[import-untyped]
import grpc
from locust import constant_pacing, events, task

from authsvc.seeding import account_login, account_org, account_phone, org_siret, seed_password
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc, common_pb2
from loadtests.grpc_user import CALL_TIMEOUT_S, GrpcUser, api_key
from loadtests.ledger import ALREADY_COMPLETED, KEEP_SESSIONS, LEDGER, RETRIES, RETRY_PAUSE_S

ACCOUNTS = int(os.environ.get("LOADTEST_ACCOUNTS", "10000"))
ORGS = int(os.environ.get("LOADTEST_ORGS", "100"))
SINK_URL = os.environ.get("LOADTEST_SINK_URL", "http://127.0.0.1:8025")
PACING_S = float(os.environ.get("LOADTEST_PACING_S", "2"))
PASSWORD = os.environ.get("LOADTEST_PASSWORD") or seed_password()
SMS_WAIT_S = float(os.environ.get("LOADTEST_SMS_WAIT_S", "15"))
# Locust processes sharing the accounts (--processes, or all workers of a distributed run).
PROCESSES = max(int(os.environ.get("LOADTEST_PROCESSES", "1")), 1)

POOLS = {
    "trusted": (0.00, 0.40),
    "code": (0.40, 0.80),
    "stepup": (0.80, 0.95),
    "abuse_password": (0.95, 0.975),
    "abuse_code": (0.975, 1.00),
}

# Refusals that abusive calls provoke by design (ErrorInfo reasons or gRPC code names).
ABUSE_PASSWORD_EXPECTED = {
    "INVALID_CREDENTIALS",
    "ACCOUNT_LOCKED",
    "RATE_LIMITED",
    "RESOURCE_EXHAUSTED",
}
ABUSE_CODE_EXPECTED = {
    "CODE_MISMATCH",
    "FLOW_FAILED",
    "ACCOUNT_LOCKED",
    "RATE_LIMITED",
    "RESOURCE_EXHAUSTED",
}


def mix() -> tuple[int, int, int, int]:
    parts = [int(p) for p in os.environ.get("LOADTEST_MIX", "70,25,5,0").split(",")]
    parts += [0] * (4 - len(parts))
    if any(p < 0 for p in parts) or sum(parts) == 0:
        raise ValueError("LOADTEST_MIX: four non-negative weights, not all zero")
    return parts[0], parts[1], parts[2], parts[3]


class AccountPicker:
    """Fresh accounts from a pool, disjoint between Locust processes."""

    _counters: ClassVar[dict[str, itertools.count[int]]] = {}

    @classmethod
    def next(cls, pool: str, worker_index: int) -> int:
        low_f, high_f = POOLS[pool]
        low, high = int(ACCOUNTS * low_f), int(ACCOUNTS * high_f)
        size = max(high - low, 1)
        slots = min(PROCESSES, size)
        per_slot = max(size // slots, 1)
        k = next(cls._counters.setdefault(pool, itertools.count()))
        return low + worker_index % slots + slots * (k % per_slot)


@dataclass(frozen=True)
class Person:
    index: int

    @property
    def siret(self) -> str:
        return org_siret(account_org(self.index, ORGS))

    @property
    def login(self) -> str:
        return account_login(self.index)

    @property
    def phone(self) -> str:
        return account_phone(self.index)

    @property
    def client(self) -> common_pb2.ClientContext:
        i = self.index
        return common_pb2.ClientContext(
            ip_address=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            user_agent="Mozilla/5.0 (authsvc loadtest)",
        )


class PeakUser(GrpcUser):
    abstract = True
    wait_time = constant_pacing(PACING_S)

    def worker_index(self) -> int:
        return int(getattr(self.environment.runner, "worker_index", 0) or 0)

    def person(self, pool: str) -> Person:
        return Person(AccountPicker.next(pool, self.worker_index()))

    # ---- building blocks -------------------------------------------------------------------

    def retried(self, name: str, method: Any, request: Any, **kwargs: Any) -> Any:
        """`call`, tried again while the answer is UNAVAILABLE (a replica died with the call in
        flight: the balancer sends the next try to another one). Only for calls that a retry
        cannot make happen twice: reads, Login (a new flow), Challenge under one idempotency
        key, Logout; Verify has its own loop (answer_code)."""
        for attempt in range(RETRIES + 1):
            response = self.call(name, method, request, **kwargs)
            if response is not None or self.last_code != "UNAVAILABLE" or attempt == RETRIES:
                return response
            gevent.sleep(RETRY_PAUSE_S)
        return None

    def sms_code(self, person: Person) -> str | None:
        """The code the sink received for this person's phone, timed as 'sms / delivery'."""
        started = time.perf_counter()
        url = f"{SINK_URL}/code?to={quote(person.phone)}&timeout={SMS_WAIT_S}"
        exception: Exception | None = None
        code: str | None = None
        try:
            with urllib.request.urlopen(url, timeout=SMS_WAIT_S + 5) as answer:
                if answer.status == 200:
                    code = str(json.loads(answer.read())["code"])
                else:
                    exception = RuntimeError("no SMS within the wait")
        except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
            exception = RuntimeError(f"sink: {error}")
        self.environment.events.request.fire(
            request_type="sms",
            name="delivery (Challenge answer to code read)",
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=0,
            exception=exception,
            context={},
        )
        return code

    def password_login(
        self, person: Person, *, device_token: str = "", name: str = "Login"
    ) -> pb.LoginResponse | None:
        login: pb.LoginResponse | None = self.retried(
            name,
            self.auth.Login,
            pb.LoginRequest(
                organization_siret=person.siret,
                login=person.login,
                password=pb.PasswordCredential(password=PASSWORD),
                device_token=device_token,
                client=person.client,
            ),
        )
        if login is not None and login.HasField("session"):
            LEDGER.sessions_issued += 1
        return login

    def answer_code(
        self, person: Person, flow_id: str, prefix: str = ""
    ) -> pb.VerifyResponse | None:
        challenge = self.retried(
            f"{prefix}Challenge",
            self.auth.Challenge,
            pb.ChallengeRequest(
                flow_id=flow_id,
                channel=common_pb2.CHANNEL_SMS,
                idempotency_key=str(uuid.uuid4()),
                client=person.client,
            ),
        )
        if challenge is None:
            return None
        code = self.sms_code(person)
        if code is None:
            return None
        LEDGER.codes_received += 1
        retried = False
        for _ in range(RETRIES + 1):
            verified: pb.VerifyResponse | None = self.call(
                f"{prefix}Verify",
                self.auth.Verify,
                pb.VerifyRequest(flow_id=flow_id, code=code, client=person.client),
            )
            if verified is not None:
                LEDGER.codes_verified += 1
                if verified.HasField("login"):
                    LEDGER.sessions_issued += 1
                return verified
            if self.last_code != "UNAVAILABLE":
                break
            retried = True
            gevent.sleep(RETRY_PAUSE_S)
        if retried and self.last_reason == ALREADY_COMPLETED:
            LEDGER.verify_unanswered += 1
        else:
            LEDGER.codes_lost += 1
        return None

    def code_login(self, person: Person, prefix: str = "") -> pb.LoginVerification | None:
        login = self.password_login(person, name=f"{prefix}Login")
        if login is None:
            return None
        if not login.HasField("pending_flow"):
            self.unexpected(f"{prefix}Login", "a first login gave a session without a code")
            return None
        verified = self.answer_code(person, login.pending_flow.flow_id, prefix)
        if verified is None:
            return None
        if not verified.HasField("login"):
            self.unexpected(f"{prefix}Verify", "a login code gave no session")
            return None
        return verified.login

    def session_round(self, person: Person, token: str) -> None:
        valid = self.retried(
            "ValidateSession",
            self.auth.ValidateSession,
            pb.ValidateSessionRequest(session_token=token, client=person.client),
        )
        if valid is None:
            LEDGER.sessions_lost += 1
        if KEEP_SESSIONS:  # checked again when the run ends, then logged out
            LEDGER.kept.append((token, person.client.ip_address))
            return
        self.retried(
            "Logout",
            self.auth.Logout,
            pb.LogoutRequest(session_token=token, client=person.client),
        )


class TrustedDeviceUser(PeakUser):
    weight = 70

    def on_start(self) -> None:
        self.me = self.person("trusted")
        enrolled = self.code_login(self.me, prefix="enroll: ")
        self.device_token = enrolled.device_token if enrolled else ""

    @task
    def login_on_trusted_device(self) -> None:
        if not self.device_token:
            self.on_start()
            return
        login = self.password_login(self.me, device_token=self.device_token)
        if login is None:
            return
        if not login.HasField("session"):
            self.unexpected("Login", "a trusted device was asked for a code")
            return
        self.session_round(self.me, login.session.token)


class CodeLoginUser(PeakUser):
    weight = 25

    @task
    def first_login_with_a_code(self) -> None:
        person = self.person("code")
        verified = self.code_login(person)
        if verified is not None:
            self.session_round(person, verified.session.token)


class StepUpUser(PeakUser):
    weight = 5
    # At most 10 codes an hour reach one number, 5 of them at once (the server's limit is a
    # GCRA cap: half burst, half refilled over the hour); enrolment took one: move on after 4.
    STEP_UPS_PER_ACCOUNT = 4

    def on_start(self) -> None:
        self.me = self.person("stepup")
        self.step_ups = 0
        enrolled = self.code_login(self.me, prefix="enroll: ")
        self.device_token = enrolled.device_token if enrolled else ""

    @task
    def change_own_password(self) -> None:
        if not self.device_token or self.step_ups >= self.STEP_UPS_PER_ACCOUNT:
            self.on_start()
            return
        self.step_ups += 1
        login = self.password_login(self.me, device_token=self.device_token)
        if login is None:
            return
        if not login.HasField("session"):
            self.unexpected("Login", "a trusted device was asked for a code")
            return
        token = login.session.token
        opened = self.call(
            "AuthorizeSensitiveAction",
            self.auth.AuthorizeSensitiveAction,
            pb.AuthorizeSensitiveActionRequest(
                session_token=token,
                action=common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD,
                client=self.me.client,
            ),
        )
        if opened is not None:
            verified = self.answer_code(self.me, opened.pending_flow.flow_id)
            if verified is not None and not verified.HasField("action_grant"):
                self.unexpected("Verify", "a step-up code gave no action grant")
        self.call(
            "Logout",
            self.auth.Logout,
            pb.LogoutRequest(session_token=token, client=self.me.client),
        )


class AbusiveUser(PeakUser):
    weight = 0
    wait_time = constant_pacing(max(PACING_S / 4, 0.1))

    def on_start(self) -> None:
        self.password_victim = self.person("abuse_password")
        self.code_victim = self.person("abuse_code")

    @task(3)
    def wrong_passwords(self) -> None:
        victim = self.password_victim
        for attempt in range(6):
            response = self.call(
                "abuse: Login (wrong password)",
                self.auth.Login,
                pb.LoginRequest(
                    organization_siret=victim.siret,
                    login=victim.login,
                    password=pb.PasswordCredential(password=f"{PASSWORD}-wrong-{attempt}"),
                    client=victim.client,
                ),
                expected=ABUSE_PASSWORD_EXPECTED,
            )
            if response is not None:
                self.unexpected("abuse: Login (wrong password)", "a wrong password was accepted")

    @task(1)
    def wrong_codes(self) -> None:
        victim = self.code_victim
        login = self.call(
            "abuse: Login",
            self.auth.Login,
            pb.LoginRequest(
                organization_siret=victim.siret,
                login=victim.login,
                password=pb.PasswordCredential(password=PASSWORD),
                client=victim.client,
            ),
            expected={"ACCOUNT_LOCKED", "RATE_LIMITED", "RESOURCE_EXHAUSTED"},
        )
        if login is None or not login.HasField("pending_flow"):
            return
        flow_id = login.pending_flow.flow_id
        sent = self.call(
            "abuse: Challenge",
            self.auth.Challenge,
            pb.ChallengeRequest(flow_id=flow_id, client=victim.client),
            expected={"SEND_LIMIT_REACHED", "RATE_LIMITED", "RESOURCE_EXHAUSTED", "ACCOUNT_LOCKED"},
        )
        if sent is None:
            return
        real = self.sms_code(victim) or "000000"
        wrong = f"{(int(real) + 1) % 1_000_000:06d}"
        for _ in range(6):  # one more than a challenge allows
            verified = self.call(
                "abuse: Verify (wrong code)",
                self.auth.Verify,
                pb.VerifyRequest(flow_id=flow_id, code=wrong, client=victim.client),
                expected=ABUSE_CODE_EXPECTED,
            )
            if verified is not None:
                self.unexpected("abuse: Verify (wrong code)", "a wrong code was accepted")


def _revalidate_and_write_ledger(environment: Any, **_: Any) -> None:
    """The kept sessions, validated once more after the fault (through the balancer, so on
    whichever replica it picks), then logged out; the counts written for run.py."""
    if LEDGER.kept:
        metadata = (("authorization", f"Bearer {key}"),) if (key := api_key()) else ()
        with grpc.insecure_channel(environment.host or "127.0.0.1:50051") as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            for token, ip in LEDGER.kept:
                client = common_pb2.ClientContext(ip_address=ip, user_agent="authsvc loadtest")
                if not _still_valid(stub, token, client, metadata):
                    LEDGER.sessions_lost += 1
                LEDGER.sessions_revalidated += 1
                with contextlib.suppress(grpc.RpcError):
                    stub.Logout(
                        pb.LogoutRequest(session_token=token, client=client),
                        metadata=metadata,
                        timeout=CALL_TIMEOUT_S,
                    )
        LEDGER.kept.clear()
    LEDGER.unavailable = GrpcUser.unavailable
    LEDGER.write()


events.test_stop.add_listener(_revalidate_and_write_ledger)  # type: ignore[no-untyped-call]


def _still_valid(stub: Any, token: str, client: Any, metadata: Any) -> bool:
    for _ in range(RETRIES + 1):
        try:
            stub.ValidateSession(
                pb.ValidateSessionRequest(session_token=token, client=client),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )
            return True
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                return False
            gevent.sleep(RETRY_PAUSE_S)
    return False


def apply_mix() -> list[type[PeakUser]]:
    """Set the classes' weights from LOADTEST_MIX; a class weighted 0 is left out."""
    classes: list[type[PeakUser]] = [TrustedDeviceUser, CodeLoginUser, StepUpUser, AbusiveUser]
    active = []
    for cls, weight in zip(classes, mix(), strict=True):
        cls.weight = weight
        cls.abstract = weight == 0
        if weight:
            active.append(cls)
    return active


def describe() -> dict[str, Any]:
    trusted, code, stepup, abuse = mix()
    return {
        "mix": {"trusted": trusted, "code": code, "stepup": stepup, "abuse": abuse},
        "accounts": ACCOUNTS,
        "orgs": ORGS,
        "pacing_s": PACING_S,
    }
