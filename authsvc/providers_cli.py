"""`authsvc providers status`: every channel's providers in order and their breakers.

The breakers live in the dispatcher processes (courier/failover.py: no shared state is needed,
the outbox lease makes one sender per message); each dispatcher publishes its breakers on its
/metrics (`authsvc_provider_breaker_state`), so this command reads them there: the dispatcher of
this configuration at AUTHSVC_METRICS_LISTEN by default, or each `--metrics URL` given (one per
dispatcher process or replica). Nothing is kept apart from the process that decides, so nothing
can be stale: a dispatcher that does not answer is reported as such.

Exit status: 0 when every channel has a provider that takes messages, 1 when some channel has
every breaker open (in some dispatcher), 2 when a dispatcher could not be read.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from authsvc.config import Settings
from authsvc.courier.providers import CHANNELS

GAUGE = "authsvc_provider_breaker_state"
STATES = {0.0: "closed", 1.0: "half_open", 2.0: "open"}


def add_parsers(commands: Any) -> None:
    providers = commands.add_parser("providers", help="delivery providers and their breakers")
    actions = providers.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="each channel's providers, in order, and state")
    status.add_argument(
        "--metrics",
        action="append",
        help="a dispatcher's /metrics URL (repeat for several; default: AUTHSVC_METRICS_LISTEN)",
    )


def breaker_states(exposition: str) -> dict[tuple[str, str], str]:
    """(channel, provider) -> state, from one Prometheus text exposition."""
    found: dict[tuple[str, str], str] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != GAUGE:
            continue
        for sample in family.samples:
            key = (sample.labels.get("channel", ""), sample.labels.get("provider", ""))
            found[key] = STATES.get(sample.value, "unknown")
    return found


def run(settings: Settings, args: argparse.Namespace) -> int | None:
    """Run one of these commands; None when `args` names another one."""
    if args.command != "providers":
        return None
    urls: list[str] = args.metrics or []
    if not urls and settings.metrics_listen:
        urls = [f"http://{settings.metrics_listen}/metrics"]
    if not urls:
        print(
            "no dispatcher to ask: set AUTHSVC_METRICS_LISTEN (the dispatcher's /metrics) "
            "or give --metrics URL",
            file=sys.stderr,
        )
        return 2
    views: dict[str, dict[tuple[str, str], str] | None] = {}
    for url in urls:
        try:
            response = httpx.get(url, timeout=5.0, trust_env=False)
            response.raise_for_status()
            views[url] = breaker_states(response.text)
        except (httpx.HTTPError, ValueError) as error:
            print(f"{url}: unreadable ({type(error).__name__})", file=sys.stderr)
            views[url] = None
    print(f"{'channel':<8} {'#':<2} {'provider':<32} {'kind':<8} state per dispatcher")
    every_open = False
    for channel in CHANNELS:
        entries = settings.channel_providers(channel)
        open_everywhere = {url: True for url, view in views.items() if view is not None}
        for index, entry in enumerate(entries, 1):
            states = []
            for url, view in views.items():
                state = "unreadable" if view is None else view.get((channel, entry.name), "-")
                states.append(state)
                if view is not None and state != "open":
                    open_everywhere[url] = False
            print(
                f"{channel:<8} {index:<2} {entry.name:<32} {entry.kind.value:<8} "
                + " ".join(states)
            )
        every_open |= any(open_everywhere.values())
    if any(view is None for view in views.values()):
        return 2
    return 1 if every_open else 0
