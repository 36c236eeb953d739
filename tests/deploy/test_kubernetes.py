"""deploy/kubernetes/: every manifest valid against the Kubernetes schemas (offline, with the
schemas that the pinned `kubernetes-validate` ships), and consistent with the service: the
settings they give pass production's checks, probes ask the gRPC health service, secrets come by
reference only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authsvc.config import Settings
from authsvc.db.migrate import upgrade
from authsvc.server import create_server

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES = "1.33.0"
SECRET_VALUES = {
    "secret-key": "A" * 43,
    "database-url": "postgresql+asyncpg://authsvc@pgbouncer.database.svc:6432/authsvc",
    "api-keys": '[{"name": "portal", "key": "' + "k" * 40 + '", "rpcs": ["*"]}]',
    "sms-http": '{"url": "https://sms.example/send"}',
    "voice-http": '{"url": "https://voice.example/call"}',
    "email-http": '{"url": "https://mail.example/send"}',
}


def _documents() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(DEPLOY.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def _kinds() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in _documents()}


@pytest.mark.parametrize(
    "document", _documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_manifests_hold_what_the_deployment_needs() -> None:
    kinds = {kind for kind, _ in _kinds()}
    assert {
        "Deployment",
        "Job",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ConfigMap",
    } <= kinds
    assert _kinds()[("Service", "authsvc-headless")]["spec"]["clusterIP"] == "None"


def _containers() -> list[dict[str, Any]]:
    return [
        container
        for document in _documents()
        if document["kind"] in ("Deployment", "Job")
        for container in document["spec"]["template"]["spec"]["containers"]
    ]


def _environment(container: dict[str, Any]) -> dict[str, str]:
    config = _kinds()[("ConfigMap", "authsvc-config")]["data"]
    env = dict(config)
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            assert set(variable["valueFrom"]) == {"secretKeyRef"}, variable  # by reference only
            env[variable["name"]] = SECRET_VALUES[variable["valueFrom"]["secretKeyRef"]["key"]]
    return env


@pytest.mark.parametrize("container", _containers(), ids=lambda c: c["name"])
def test_each_container_gets_settings_that_production_accepts(
    container: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _kinds()[("ConfigMap", "authsvc-config")]["data"]
    assert not any("SECRET" in name or "PASSWORD" in name for name in config)
    for name, value in _environment(container).items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.environment.value == "production"


async def test_the_probes_ask_services_the_server_registers(tmp_path: Path) -> None:
    api = _kinds()[("Deployment", "authsvc-api")]["spec"]["template"]["spec"]["containers"][0]
    asked = {
        api[probe]["grpc"].get("service", "")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    url = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    await asyncio.to_thread(upgrade, url)
    server = await create_server(
        Settings(database_url=url, secret_key_file=tmp_path / "k"), listen="127.0.0.1:0"
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in asked:
                answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    finally:
        await server.stop(grace=0)


def _port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    "name", ["authsvc-api", "authsvc-dispatcher"], ids=lambda name: name.removeprefix("authsvc-")
)
def test_prometheus_finds_metrics_where_the_settings_serve_them(name: str) -> None:
    deployment = _kinds()[("Deployment", name)]
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    listen = _environment(container)["AUTHSVC_METRICS_LISTEN"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"] == _port_of(listen)
    policy = _kinds()[("NetworkPolicy", "authsvc")]["spec"]["ingress"]
    assert any({"protocol": "TCP", "port": ports["metrics"]} in rule["ports"] for rule in policy), (
        "the monitoring namespace must reach /metrics"
    )


def test_the_receipt_listener_is_exposed_where_the_settings_listen() -> None:
    api = _kinds()[("Deployment", "authsvc-api")]["spec"]["template"]["spec"]["containers"][0]
    listen = _environment(api)["AUTHSVC_RECEIPTS_LISTEN"]
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    assert ports["receipts"] == _port_of(listen)
    service_ports = {
        port["name"]: port["targetPort"]
        for port in _kinds()[("Service", "authsvc")]["spec"]["ports"]
    }
    assert service_ports["receipts"] == "receipts"


def test_liveness_and_readiness_ask_different_names() -> None:
    api = _kinds()[("Deployment", "authsvc-api")]["spec"]["template"]["spec"]["containers"][0]
    # Liveness must not depend on the database (a restart would not bring it back); readiness
    # must (a replica without its database takes no calls).
    assert api["livenessProbe"]["grpc"]["service"] == "authsvc.liveness"
    assert api["readinessProbe"]["grpc"]["service"] == "authsvc.v1.AuthService"
