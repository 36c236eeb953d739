"""Only known backends may call: API keys (hashed, per-RPC rights) and mutual TLS; health and
reflection stay open; TLS for the server with a certificate made here."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import CLIENT, PASSWORD, TEST_API_KEY, failure_of, seed_account

from authsvc.api.callers import list_backends, register_backend, revoke_backend
from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc

LOGIN = pb.LoginRequest(
    organization_siret="21180001500011",
    login="nobody",
    password=pb.PasswordCredential(password="not the password"),
    client=CLIENT,
)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
async def bare(server: Server) -> AsyncIterator[Any]:
    """A channel that sends no credentials by itself."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield auth_service_pb2_grpc.AuthServiceStub(channel)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="no-key"),
        pytest.param(bearer("authsvc_wrong-key"), id="wrong-key"),
        pytest.param(bearer(TEST_API_KEY + "x"), id="near-key"),
        pytest.param((("authorization", TEST_API_KEY),), id="no-scheme"),
        pytest.param((("authorization", "Basic " + TEST_API_KEY),), id="other-scheme"),
        pytest.param(bearer("x" * 4000), id="huge-key"),
        pytest.param((*bearer(TEST_API_KEY), *bearer(TEST_API_KEY)), id="two-keys"),
    ],
)
async def test_calls_without_valid_credentials_are_refused(
    bare: Any, metadata: tuple[tuple[str, str], ...]
) -> None:
    refused = await failure_of(bare.Login(LOGIN, metadata=metadata))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )


async def test_the_right_key_reaches_the_rpc(bare: Any) -> None:
    answered = await failure_of(bare.Login(LOGIN, metadata=bearer(TEST_API_KEY)))
    assert answered.reason == "INVALID_CREDENTIALS"  # the RPC itself answered


async def test_health_and_reflection_stay_open(server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service="authsvc.sends"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_keys_from_the_database_with_their_rpcs(server: Server, bare: Any) -> None:
    key = await register_backend(server.app, "portal", ["ValidateSession"])
    assert key is not None and key.startswith("authsvc_")
    rows = await list_backends(server.app)
    assert [(row.name, row.rpcs) for row in rows] == [("portal", "AuthService/ValidateSession")]
    assert rows[0].key_digest is not None and key.encode() not in rows[0].key_digest
    assert server.callers is not None
    await server.callers.refresh()
    session = pb.ValidateSessionRequest(session_token="A" * 43, client=CLIENT)
    allowed = await failure_of(bare.ValidateSession(session, metadata=bearer(key)))
    assert allowed.reason == "SESSION_INVALID"
    other_rpc = await failure_of(bare.Login(LOGIN, metadata=bearer(key)))
    assert other_rpc.reason == "PERMISSION_DENIED"
    assert await revoke_backend(server.app, "portal")
    await server.callers.refresh()
    revoked = await failure_of(bare.ValidateSession(session, metadata=bearer(key)))
    assert revoked.reason == "PERMISSION_DENIED"


# ---- TLS and mutual TLS ------------------------------------------------------------------------


def _certificate(
    name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, ca: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


async def test_tls_with_a_key_and_mutual_tls_with_a_client_certificate(
    settings: Settings, clock: FrozenClock, tmp_path: Path
) -> None:
    ca_cert, ca_key = _certificate("authsvc test CA", None, ca=True)
    ca = (ca_cert.subject, ca_key)
    server_cert, server_key = _certificate("localhost", ca)
    client_cert, client_key = _certificate("billing", ca)
    files = {
        "ca.pem": _pem(ca_cert),
        "server.pem": _pem(server_cert),
        "server.key": _key_pem(server_key),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    tls = settings.model_copy(
        update={
            "tls_cert_file": tmp_path / "server.pem",
            "tls_key_file": tmp_path / "server.key",
        }
    )
    # TLS, callers by API key.
    server = await create_server(tls, clock=clock, listen="127.0.0.1:0")
    await server.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=_pem(ca_cert))
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
            stub: Any = auth_service_pb2_grpc.AuthServiceStub(channel)
            assert (await failure_of(stub.Login(LOGIN))).reason == "PERMISSION_DENIED"
            keyed = await failure_of(stub.Login(LOGIN, metadata=bearer(TEST_API_KEY)))
            assert keyed.reason == "INVALID_CREDENTIALS"
    finally:
        await server.stop(grace=0)

    # Mutual TLS: the client certificate's identity names the backend.
    mutual = tls.model_copy(
        update={
            "tls_client_ca_file": tmp_path / "ca.pem",
            "api_keys": ({"name": "billing", "rpcs": ["Login"]},),
        }
    )
    mutual = Settings.model_validate(mutual.model_dump())
    server = await create_server(mutual, clock=clock, listen="127.0.0.1:0")
    await server.start()
    try:
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=_pem(ca_cert),
            private_key=_key_pem(client_key),
            certificate_chain=_pem(client_cert),
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", with_cert) as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            assert (await failure_of(stub.Login(LOGIN))).reason == "INVALID_CREDENTIALS"
            session = pb.ValidateSessionRequest(session_token="A" * 43, client=CLIENT)
            assert (await failure_of(stub.ValidateSession(session))).reason == "PERMISSION_DENIED"
        without_cert = grpc.ssl_channel_credentials(root_certificates=_pem(ca_cert))
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", without_cert) as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Login(LOGIN, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # no TLS handshake
    finally:
        await server.stop(grace=0)


async def test_idempotency_keys_are_scoped_per_backend(
    server: Server, bare: Any, clock: FrozenClock, inbox: Any
) -> None:
    """Backend B reusing backend A's idempotency key gets its own challenge (and its own
    code), not A's: before, B received A's challenge and no code was sent."""
    alice = await seed_account(server)
    other = await register_backend(server.app, "other", ["*"])
    assert other is not None and server.callers is not None
    await server.callers.refresh()
    pending = (
        await bare.Login(
            pb.LoginRequest(
                organization_siret=alice.organization_siret,
                login=alice.login,
                password=pb.PasswordCredential(password=PASSWORD),
                client=CLIENT,
            ),
            metadata=bearer(TEST_API_KEY),
        )
    ).pending_flow
    request = pb.ChallengeRequest(flow_id=pending.flow_id, idempotency_key="retry-1", client=CLIENT)
    first = await bare.Challenge(request, metadata=bearer(TEST_API_KEY))
    again = await bare.Challenge(request, metadata=bearer(TEST_API_KEY))
    assert again.challenge_id == first.challenge_id  # A's retry: the same challenge
    assert len(await inbox.wait_for(1)) == 1
    clock.advance(31)  # past the resend cooldown
    theirs = await bare.Challenge(request, metadata=bearer(other))
    assert theirs.challenge_id != first.challenge_id
    assert len(await inbox.wait_for(2)) == 2  # B's call sent its own code


async def test_a_certificate_names_only_backends_that_accept_certificates(
    settings: Settings, clock: FrozenClock, tmp_path: Path
) -> None:
    """The attack: a client certificate from the client CA whose name is a key-only backend's
    ("tests" from the configuration, "portal" from `backend add`) got that backend's rights."""
    ca_cert, ca_key = _certificate("authsvc test CA", None, ca=True)
    ca = (ca_cert.subject, ca_key)
    server_cert, server_key = _certificate("localhost", ca)
    (tmp_path / "ca.pem").write_bytes(_pem(ca_cert))
    (tmp_path / "server.pem").write_bytes(_pem(server_cert))
    (tmp_path / "server.key").write_bytes(_key_pem(server_key))
    mutual = Settings.model_validate(
        {
            **settings.model_dump(),
            "tls_cert_file": tmp_path / "server.pem",
            "tls_key_file": tmp_path / "server.key",
            "tls_client_ca_file": tmp_path / "ca.pem",
            "api_keys": [
                {"name": "tests", "key": TEST_API_KEY, "rpcs": ["*"]},  # key only (default)
                {"name": "billing", "rpcs": ["*"]},  # no key: mTLS
            ],
        }
    )
    server = await create_server(mutual, clock=clock, listen="127.0.0.1:0")
    await server.start()
    try:

        async def reason(name: str, metadata: tuple[tuple[str, str], ...] = ()) -> str:
            cert, key = _certificate(name, ca)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(ca_cert),
                private_key=_key_pem(key),
                certificate_chain=_pem(cert),
            )
            async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials) as chan:
                stub: Any = auth_service_pb2_grpc.AuthServiceStub(chan)
                session = pb.ValidateSessionRequest(session_token="A" * 43, client=CLIENT)
                return (await failure_of(stub.ValidateSession(session, metadata=metadata))).reason

        assert await reason("tests") == "PERMISSION_DENIED"  # a configured key backend
        portal_key = await register_backend(server.app, "portal", ["*"])
        hybrid_key = await register_backend(server.app, "hybrid", ["*"], credentials="both")
        assert await register_backend(server.app, "certs", ["*"], credentials="mtls") is None
        assert portal_key is not None and hybrid_key is not None and server.callers is not None
        await server.callers.refresh()
        rows = {row.name: row.credentials for row in await list_backends(server.app)}
        assert rows == {"portal": "key", "hybrid": "both", "certs": "mtls"}

        assert await reason("portal") == "PERMISSION_DENIED"
        assert await reason("billing") == "SESSION_INVALID"  # the RPC answered
        assert await reason("hybrid") == "SESSION_INVALID"
        assert await reason("certs") == "SESSION_INVALID"
        # Keys still name key backends, whatever certificate the channel presents.
        assert await reason("nobody", bearer(portal_key)) == "SESSION_INVALID"
        assert await reason("nobody", bearer(hybrid_key)) == "SESSION_INVALID"
    finally:
        await server.stop(grace=0)


def test_configured_credentials_must_fit_the_keys() -> None:
    with pytest.raises(ValueError, match="need a key"):
        Settings(api_keys=[{"name": "x", "credentials": "both"}])
    with pytest.raises(ValueError, match="takes no key"):
        Settings(api_keys=[{"name": "x", "key": "k" * 20, "credentials": "mtls"}])
    both = Settings(api_keys=[{"name": "x", "key": "k" * 20, "credentials": "both"}])
    assert both.api_keys[0].accepts == "both"
    assert Settings(api_keys=[{"name": "y"}]).api_keys[0].accepts == "mtls"
