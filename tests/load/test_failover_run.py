"""Issue 15's load run: a Locust wave while the primary SMS gateway stops answering for a few
seconds. Every code issued reaches a gateway (none lost), none twice, the backup takes the
outage's messages and the primary is used again once it answers (the sink's own books and the
server's /metrics, read by loadtests/failover.py; timings reported, never asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _count(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found is not None, (pattern, text)
    return int(found[1])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_failing_primary_gateway_loses_no_code(tmp_path: Path) -> None:
    name = f"failover-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [
            sys.executable, "-m", "loadtests.run", "--smoke", "--name", name,
            "--out", str(tmp_path), "--fail-primary-at", "3", "--fail-primary-for", "5",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=230,
    )  # fmt: skip
    summary = (tmp_path / f"{name}_summary.md").read_text()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unexpected failures: **0**" in summary
    assert _count(r"\*\*lost codes (\d+)\*\*", summary) == 0
    assert _count(r"\*\*sent twice (\d+)\*\*", summary) == 0
    assert _count(r"codes issued \(SMS and voice\) (\d+)", summary) > 0
    assert _count(r"left unanswered (\d+)", summary) > 0  # the outage happened under load
    assert _count(r"backup (\d+);", summary) > 0  # the backup took over
    assert _count(r"after it came back (\d+)", summary) > 0  # and the primary came back
