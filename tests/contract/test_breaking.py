"""`make api-check` (buf breaking, category FILE) against the committed image of the released
API: the current proto/ passes, and the changes that break callers are caught, including moving
a message to another file (which breaks Python imports)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tools/node_modules/.bin/buf"
BASELINE = ROOT / "proto/released/authsvc-v1.binpb"
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def buf() -> Path:
    if not BUF.exists():
        reason = "tools/node_modules has no buf: run `make api-check` (npm ci --prefix tools)"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: make test installs it)")
        pytest.skip(reason)
    return BUF


def _breaking(buf: Path, proto: Path) -> tuple[int, set[str], str]:
    """buf breaking's exit code, the rules it reports (JSON lines) and its whole output."""
    done = subprocess.run(
        [str(buf), "breaking", str(proto), "--against", str(BASELINE), "--error-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    rules = {json.loads(line)["type"] for line in done.stdout.splitlines() if line.strip()}
    return done.returncode, rules, done.stdout + done.stderr


def _copy_of_proto(tmp_path: Path) -> Path:
    copy = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", copy, ignore=shutil.ignore_patterns("released"))
    return copy


def test_the_current_api_breaks_nothing(buf: Path, tmp_path: Path) -> None:
    code, rules, output = _breaking(buf, _copy_of_proto(tmp_path))
    assert (code, rules) == (0, set()), output


def test_a_renamed_field_is_a_breaking_change(buf: Path, tmp_path: Path) -> None:
    proto = _copy_of_proto(tmp_path)
    source = proto / "authsvc/v1/auth_service.proto"
    text = source.read_text()
    assert "string flow_id = 1;" in text
    source.write_text(text.replace("string flow_id = 1;", "string flow = 1;", 1))
    code, rules, output = _breaking(buf, proto)
    assert code != 0
    assert {"FIELD_SAME_NAME", "FIELD_SAME_JSON_NAME"} <= rules, output


def test_moving_a_message_to_another_file_is_a_breaking_change(buf: Path, tmp_path: Path) -> None:
    # auth_service.proto imports common.proto, so the moved message still compiles: only the
    # file it lives in changes (Python: authsvc.v1.common_pb2 instead of auth_service_pb2).
    proto = _copy_of_proto(tmp_path)
    auth = proto / "authsvc/v1/auth_service.proto"
    common = proto / "authsvc/v1/common.proto"
    text = auth.read_text()
    start = text.index("// A password used as the first factor.")
    end = text.index("}\n", start) + 2
    message = text[start:end]
    assert message.count("message PasswordCredential {") == 1, message
    auth.write_text(text[:start] + text[end:])
    common.write_text(common.read_text() + "\n" + message)
    code, rules, output = _breaking(buf, proto)
    assert code != 0
    assert rules == {"MESSAGE_NO_DELETE"}, output  # FILE: a message belongs to its file
