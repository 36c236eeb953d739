"""The one-page summary of a load-test run, from Locust's CSV files: reports/<name>_summary.md."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

from loadtests.server_metrics import ServerFigures, markdown

# Calls that are a first factor (a "login" in the national figure).
LOGIN_NAMES = ("Login", "enroll: Login")


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _num(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except FileNotFoundError:
        model = platform.processor()
    return f"nproc={os.cpu_count()}, CPU {model or 'unknown'}, Python {platform.python_version()}"


def commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def peak_rates(history: list[dict[str, str]]) -> tuple[float, float, int]:
    """Median requests/s and logins/s while the user count was at its maximum."""
    if not history:
        return 0.0, 0.0, 0
    top = max(int(_num(r["User Count"])) for r in history)
    aggregated: list[float] = []
    logins: defaultdict[str, float] = defaultdict(float)
    for row in history:
        if int(_num(row["User Count"])) != top:
            continue
        if row["Name"] == "Aggregated":
            aggregated.append(_num(row["Requests/s"]))
        elif row["Name"] in LOGIN_NAMES:
            logins[row["Timestamp"]] += _num(row["Requests/s"])
    # Skip the first samples at the top: Locust's rate is a moving window.
    aggregated = aggregated[3:] or aggregated
    login_rates = list(logins.values())[3:] or list(logins.values())
    return (
        statistics.median(aggregated) if aggregated else 0.0,
        statistics.median(login_rates) if login_rates else 0.0,
        top,
    )


def fault_lines(faults: dict[str, Any]) -> list[str]:
    """The topology run's section: what the kill cost (loadtests/ledger.py says each count)."""
    scan = faults.get("consistency", {})
    broken = {k: v for k, v in scan.get("counts", {}).items() if v}
    killed = faults.get("killed_after_s")
    fault = f"replica1 killed (SIGKILL, with its workers) {killed} s in" if killed else "none"
    return [
        "",
        f"## Topology: {faults.get('replicas')} replicas behind HAProxy",
        "",
        f"- fault: {fault}; HAProxy at the end: {faults.get('lb_states_at_end')}",
        f"- calls answered UNAVAILABLE (retried on another replica): "
        f"**{faults.get('unavailable', 0)}**",
        f"- codes: received from the sink {faults.get('codes_received', 0)}, verified "
        f"{faults.get('codes_verified', 0)}, **lost {faults.get('codes_lost', 0)}**; decided "
        f"by the dead replica but unanswered (flow completed, user logs in again): "
        f"{faults.get('verify_unanswered', 0)}",
        f"- sessions: issued {faults.get('sessions_issued', 0)}, of which kept through the "
        f"fault and validated again at the end {faults.get('sessions_revalidated', 0)} (the "
        f"others were logged out by their journey), **lost {faults.get('sessions_lost', 0)}**",
        f"- consistency scan (`authsvc check-consistency`) after the run: "
        f"**{scan.get('violations', 'not run')} invariants broken**"
        + (f" {broken}" if broken else ""),
    ]


def write_summary(
    *,
    prefix: Path,
    args: dict[str, Any],
    started: datetime.datetime,
    memory: list[tuple[float, int, int]],
    sink: dict[str, int],
    server_exit: int | None,
    locust_exit: int,
    backends: dict[str, int] | None = None,
    server_side: ServerFigures | None = None,
    extra_sections: list[str] | None = None,
    faults: dict[str, Any] | None = None,
) -> int:
    """Write <prefix>_summary.md; return the number of unexpected failures."""
    stats = _rows(prefix.parent / f"{prefix.name}_stats.csv")
    history = _rows(prefix.parent / f"{prefix.name}_stats_history.csv")
    failures_rows = _rows(prefix.parent / f"{prefix.name}_failures.csv")
    total = next((r for r in stats if r["Name"] == "Aggregated"), None)
    per_call = [r for r in stats if r["Name"] != "Aggregated"]
    failures = int(_num(total["Failure Count"])) if total else 0
    expected = sum(int(_num(r["Request Count"])) for r in per_call if " [" in r["Name"])
    logins = sum(
        int(_num(r["Request Count"])) - int(_num(r["Failure Count"]))
        for r in per_call
        if r["Name"] in LOGIN_NAMES
    )
    duration = float(args.get("locust_s") or 1.0)
    peak_rps, peak_logins, top_users = peak_rates(history)
    lines = [
        f"# Load test `{args['scenario']}`: {args['name']}",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; commit {commit()}; {machine()}",
        f"- wave: {args['users']} users (reached {top_users}), ramp {args['ramp']:.0f} s, "
        f"peak {args['peak']:.0f} s, ramp-down {args['rampdown']:.0f} s, a journey per user "
        f"every {args['pacing']} s; mix trusted,code,stepup,abuse = {args['mix']}",
        f"- server: `authsvc serve --workers {args['workers']}`, "
        f"{'PostgreSQL' if args.get('database_url') else 'SQLite'}"
        f"{', Redis' if args.get('redis_url') else ''}, SMS through the `{args['provider']}` "
        f"provider to the sink; {args['accounts']} accounts in {args['orgs']} organisations; "
        f"Locust processes: {args['processes']} (on the same machine)",
        "",
        "## Throughput",
        "",
        f"- all calls: {_num(total['Requests/s']) if total else 0:.1f} req/s over the run, "
        f"median {peak_rps:.1f} req/s at the peak",
        f"- logins (first factor accepted): {logins} in {duration:.0f} s, "
        f"{logins / duration:.1f}/s over the run, median {peak_logins:.1f}/s at the peak",
        f"- server CPU over the run (parent and workers, /proc): "
        f"{float(args.get('server_cpu_s') or 0.0):.1f} s, "
        f"**{logins / max(float(args.get('server_cpu_s') or 0.0), 1e-9):.1f} logins per "
        f"second of server CPU** (logins/s per core of server CPU)",
        f"- unexpected failures: **{failures}**; expected refusals (abuse): {expected}",
        "",
        "## Latency per call (ms)",
        "",
        "| call | count | failures | p50 | p95 | p99 | max | req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(per_call, key=lambda r: (r["Type"], r["Name"])):
        lines.append(
            f"| {row['Type']} {row['Name']} | {row['Request Count']} | {row['Failure Count']} "
            f"| {row['50%']} | {row['95%']} | {row['99%']} | {_num(row['Max Response Time']):.0f} "
            f"| {_num(row['Requests/s']):.1f} |"
        )
    if server_side is not None:
        server_calls = sum(method.calls for method in server_side.methods.values())
        locust_calls = sum(int(_num(r["Request Count"])) for r in per_call if r["Type"] == "grpc")
        lines += [
            "",
            *markdown(server_side),
            f"- RPCs counted by the server **{server_calls}**, by Locust **{locust_calls}** "
            "(calls in flight when Locust stops its users, and those of a Locust worker's "
            "last report interval, count on the server's side only)",
        ]
    if extra_sections:
        lines += ["", *extra_sections]
    lines += ["", "## Failures", ""]
    if failures_rows:
        lines += ["| call | error | occurrences |", "|---|---|---:|"]
        for row in failures_rows:
            lines.append(f"| {row['Name']} | {row['Error']} | {row['Occurrences']} |")
    else:
        lines.append("None.")
    lines += ["", "## Server memory (resident, parent and workers)", ""]
    if memory:
        totals = [m[1] for m in memory]
        lines.append(
            f"- {memory[0][2]} processes; at start {totals[0] / 1024:.0f} MiB, "
            f"peak {max(totals) / 1024:.0f} MiB, at the end {totals[-1] / 1024:.0f} MiB "
            f"({len(memory)} samples, one a second)"
        )
    else:
        lines.append("- not sampled")
    backends = backends or {}
    if backends:
        per = max(logins, 1)
        lines += ["", "## Database and Redis during the run", ""]
        if "pg_commits" in backends:
            written = backends["pg_inserted"] + backends["pg_updated"] + backends["pg_deleted"]
            lines.append(
                f"- PostgreSQL: {backends['pg_commits'] / duration:.0f} commits/s and "
                f"{written / duration:.0f} rows written/s (inserted {backends['pg_inserted']}, "
                f"updated {backends['pg_updated']}, deleted {backends['pg_deleted']}); per "
                f"login: {backends['pg_commits'] / per:.1f} commits, {written / per:.1f} rows"
            )
        if "redis_commands" in backends:
            lines.append(
                f"- Redis: {backends['redis_commands'] / duration:.0f} commands/s, "
                f"{backends['redis_commands'] / per:.1f} per login"
            )
    if faults is not None:
        lines += fault_lines(faults)
    sends = sink.get("received", 0)
    lines += [
        "",
        "## SMS sink",
        "",
        f"- received {sink.get('received', 0)}, read by users {sink.get('taken', 0)}, "
        f"left unread {sink.get('pending', 0)}, refused (bad signature or body) "
        f"{sink.get('rejected', 0)}; {sends / duration:.1f} SMS/s over the run, "
        f"{sends / max(logins, 1):.2f} per login",
        "",
        f"Server exit status {server_exit}, Locust exit status {locust_exit}. "
        f"HTML report: `{prefix.name}.html`; CSVs: `{prefix.name}_*.csv`.",
        "",
    ]
    (prefix.parent / f"{prefix.name}_summary.md").write_text("\n".join(lines))
    return failures
