"""The load-test machinery itself: the SMS sink, and a ~15 s national_peak smoke run that must
end with zero unexpected failures (timings are reported, never asserted)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from loadtests import sms_sink

ROOT = Path(__file__).resolve().parents[2]
# loadtests/run.py --smoke: users at the peak.
SMOKE_USERS = 8


def _post(url: str, body: bytes, signature: str) -> int:
    request = urllib.request.Request(
        url, data=body, headers={"X-Authsvc-Signature": signature}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_sink_hands_each_signed_code_out_once_and_refuses_bad_signatures() -> None:
    server, mailbox, stop = sms_sink.serve(0, secret=b"s3cret")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        body = json.dumps({"to": "+33600000001", "text": "Votre code : 123456", "reference": "r"})
        good = "sha256=" + hmac.new(b"s3cret", body.encode(), hashlib.sha256).hexdigest()
        assert _post(f"{base}/sms", body.encode(), good) == 200
        assert _post(f"{base}/sms", body.encode(), "sha256=00") == 401
        with urllib.request.urlopen(f"{base}/code?to=%2B33600000001&timeout=1") as answer:
            assert json.loads(answer.read())["code"] == "123456"
        with urllib.request.urlopen(f"{base}/code?to=%2B33600000001&timeout=0.1") as answer:
            assert answer.status == 204  # handed out once
        assert mailbox.stats() == {
            "received": 1,
            "taken": 1,
            "pending": 0,
            "rejected": 1,
            "without_code": 0,
        }
    finally:
        stop.set()
        server.shutdown()


def test_sink_follows_the_file_provider(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.jsonl"
    server, mailbox, stop = sms_sink.serve(0, tail_file=outbox)
    try:
        with outbox.open("a") as handle:
            handle.write(json.dumps({"channel": "sms", "to": "+33600000002", "text": "#654321"}))
            handle.write("\n")
        assert mailbox.take("+33600000002", 5.0) is not None
    finally:
        stop.set()
        server.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_national_peak_smoke_run_has_no_unexpected_failure(tmp_path: Path) -> None:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--smoke", "--name", name, "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    summary = tmp_path / f"{name}_summary.md"
    assert done.returncode == 0, done.stdout + done.stderr
    text = summary.read_text()
    assert "unexpected failures: **0**" in text
    for journey in ("grpc Login", "grpc Verify", "AuthorizeSensitiveAction", "[CODE_MISMATCH]"):
        assert journey in text, text
    # The server's own counts (its /metrics before and after) agree with Locust's: every call
    # Locust recorded reached the server, and the server saw few more (calls in flight when
    # Locust stopped, or in a Locust worker's last unreported interval).
    counted = re.search(r"RPCs counted by the server \*\*(\d+)\*\*, by Locust \*\*(\d+)\*\*", text)
    assert counted is not None, text
    server_calls, locust_calls = int(counted[1]), int(counted[2])
    assert locust_calls > 0
    assert locust_calls <= server_calls <= locust_calls + max(2 * SMOKE_USERS, locust_calls // 20)
    assert re.search(r"codes issued by channel: sms [1-9]", text), text
    assert (tmp_path / f"{name}.html").exists()
    assert (tmp_path / f"{name}_stats.csv").exists()
