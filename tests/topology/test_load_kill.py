"""A Locust run over the three replicas with one killed (SIGKILL, with its workers) mid-run:
`loadtests.run --topology 3 --kill-replica-at S` on a fresh PostgreSQL database and the local
Redis. Calls in flight on the dead replica answer UNAVAILABLE and are retried on the others;
nothing else fails, no code the sink received is lost, every session issued (the ones opened
through the dead replica included) still validates after the fault, and the consistency scan
finds no half-written row. About 20 s of load.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support import POSTGRES_URL

from loadtests.fleet import HAPROXY

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.mark.timeout(300)
def test_a_replica_killed_under_load_loses_no_code_and_no_session(
    tmp_path: Path, redis_url: str, postgres_template: str
) -> None:
    if not HAPROXY.exists():
        reason = "HAProxy is not installed (apt-get install haproxy)"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: .ci/run installs it)")
        pytest.skip(reason)
    name = f"kill-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "loadtests.run", "--name", name, "--out", str(tmp_path)]
    command += ["--topology", "3", "--workers", "1", "--kill-replica-at", "8"]
    command += ["--users", "8", "--ramp", "2", "--peak", "18", "--rampdown", "2"]
    command += ["--pacing", "1", "--mix", "4,2,1,0", "--accounts", "2000", "--orgs", "20"]
    command += ["--database-url", POSTGRES_URL, "--redis-url", redis_url]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=290, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    faults = json.loads((tmp_path / f"{name}_faults.json").read_text())

    assert faults["killed_after_s"] is not None
    assert faults["lb_states_at_end"] == {"replica1": "DOWN", "replica2": "UP", "replica3": "UP"}
    # Work was done on both sides of the fault, and counted.
    assert faults["codes_received"] > 20 and faults["sessions_revalidated"] > 20
    assert faults["codes_lost"] == 0
    assert faults["sessions_lost"] == 0
    assert faults["codes_verified"] + faults["verify_unanswered"] == faults["codes_received"]
    assert faults["consistency"]["violations"] == 0
    assert set(faults["consistency"]["counts"].values()) == {0}
    # The only failures callers saw: UNAVAILABLE, on calls in flight at the kill.
    with (tmp_path / f"{name}_failures.csv").open(newline="") as handle:
        errors = {row["Error"]: int(row["Occurrences"]) for row in csv.DictReader(handle)}
    assert all("UNAVAILABLE" in error for error in errors), errors
    assert sum(errors.values()) <= faults["unavailable"]
