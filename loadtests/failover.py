"""The failing-primary run (`loadtests/run.py --fail-primary-at S --fail-primary-for D`).

The server gets two HTTP gateways per code channel, both served by the SMS sink: `primary`
(POST /sms) and `backup` (POST /backup/sms). S seconds into the Locust run the sink's primary
stops answering (each request held past the provider's timeout, then closed unanswered); D
seconds later it answers again. The summary then counts, from the server's /metrics and the
sink's own books:

- codes issued by Challenge (SMS and voice) against distinct messages a gateway accepted: a
  difference is a lost code (the run waits for the outbox to drain before counting);
- messages accepted twice (by one gateway or both): a code the service sent twice;
- what each gateway took, and how many requests the primary left unanswered.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass

from loadtests import server_metrics

# The provider's timeout in the run: a hung primary costs a message this long before the next
# attempt goes to the backup (the dispatcher's lease must be at least twice it).
TIMEOUT_S = 1.0
# How long the primary's breaker stays open before a probe message tries it again.
BREAKER_OPEN_S = 3.0


def server_env(sink_url: str, hmac_secret: str) -> dict[str, str]:
    """The failover settings: the two gateways in order, for SMS and voice."""

    def gateways(path: str) -> dict[str, object]:
        return {"url": f"{sink_url}{path}", "hmac_secret": hmac_secret, "timeout_s": TIMEOUT_S}

    providers = json.dumps(
        [
            {"name": "primary", "kind": "http", "http": gateways("/sms")},
            {"name": "backup", "kind": "http", "http": gateways("/backup/sms")},
        ]
    )
    return {
        "AUTHSVC_SMS_PROVIDERS": providers,
        "AUTHSVC_VOICE_PROVIDERS": providers,
        "AUTHSVC_PROVIDER_BREAKER_OPEN_S": str(BREAKER_OPEN_S),
    }


def _control(sink_url: str, state: str) -> None:
    request = urllib.request.Request(
        f"{sink_url}/control?gateway=primary&state={state}", data=b"", method="POST"
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


@dataclass
class PrimaryOutage:
    """Takes the sink's primary down at `at` seconds after start() and up `lasting` later."""

    sink_url: str
    at: float
    lasting: float

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="primary-outage", daemon=True)
        self.down_at: float | None = None
        self.up_at: float | None = None

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        if self._stop.wait(self.at):
            return
        _control(self.sink_url, "down")
        self.down_at = time.monotonic() - self._began
        self._stop.wait(self.lasting)
        _control(self.sink_url, "up")  # also when stopped early: the sink must answer again
        self.up_at = time.monotonic() - self._began

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.lasting + 10)


def wait_drained(metrics_url: str, timeout_s: float = 60.0) -> bool:
    """Wait until the server's outbox holds nothing waiting (its gauge, every channel)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = server_metrics.scrape(metrics_url)
        waiting = sum(
            value
            for (name, _), value in samples.items()
            if name == "authsvc_outbox_messages" and value
        )
        if waiting == 0:
            return True
        time.sleep(0.5)
    return False


def markdown(
    outage: PrimaryOutage, sink: dict[str, int], server: server_metrics.ServerFigures
) -> tuple[list[str], int]:
    """The summary's section, and the number of codes lost or sent twice (0 is the target)."""
    issued = sum(server.codes_issued.get(channel, 0) for channel in ("sms", "voice"))
    accepted = sink.get("references", 0)
    lost = max(issued - accepted, 0)
    twice = sink.get("accepted_twice", 0)
    lines = [
        "## Failover (primary gateway stopped answering)",
        "",
        f"- primary down from {outage.down_at or 0:.1f} s to {outage.up_at or 0:.1f} s of the "
        f"run (provider timeout {TIMEOUT_S:.1f} s, breaker open {BREAKER_OPEN_S:.0f} s)",
        f"- messages accepted: primary {sink.get('accepted_primary', 0)}, backup "
        f"{sink.get('accepted_backup', 0)}; requests the primary left unanswered "
        f"{sink.get('stalled_primary', 0)}; accepted by the primary after it came back "
        f"{sink.get('after_outage_primary', 0)}",
        f"- codes issued (SMS and voice) {issued}, accepted by a gateway {accepted}: "
        f"**lost codes {lost}**, **sent twice {twice}**",
    ]
    return lines, lost + twice
