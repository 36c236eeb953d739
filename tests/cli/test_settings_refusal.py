"""A refused setting stops every command with one line per setting (variable, value, bound), no
traceback; values that may hold a secret are never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from authsvc.config import Settings, describe_refusal


def _migrate(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")},
        "AUTHSVC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
        **variables,
    }
    return subprocess.run(
        [sys.executable, "-m", "authsvc", "migrate"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        ("AUTHSVC_MAX_CODE_ATTEMPTS", "6", "AUTHSVC_MAX_CODE_ATTEMPTS=6 refused: at most 5"),
        ("AUTHSVC_CODE_TTL_S", "59", "AUTHSVC_CODE_TTL_S=59 refused: at least 60"),
        (
            "AUTHSVC_ENVIRONMENT",
            "staging",
            "AUTHSVC_ENVIRONMENT=staging refused: one of 'development' or 'production'",
        ),
    ],
)
def test_a_refused_setting_prints_one_line(
    tmp_path: Path, variable: str, value: str, line: str
) -> None:
    done = _migrate(tmp_path, **{variable: value})
    assert done.returncode == 2
    assert done.stderr == line + "\n"
    assert not (tmp_path / "a.db").exists()  # refused before anything ran


def test_a_value_that_may_hold_a_secret_is_not_printed(tmp_path: Path) -> None:
    keys = json.dumps([{"name": "not allowed!", "key": "s3cret-backend-key-value"}])
    done = _migrate(tmp_path, AUTHSVC_API_KEYS=keys)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "AUTHSVC_API_KEYS (value not shown) refused (0.name): "
        "String should match pattern '^[A-Za-z0-9._-]+$'"
    ]
    assert "s3cret" not in done.stderr


def test_a_rule_across_settings_is_named_by_its_message() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(environment="production")
    assert describe_refusal(refused.value) == [
        "configuration refused: AUTHSVC_SECRET_KEY is required in production"
    ]


def test_every_refused_setting_gets_its_line() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(max_code_attempts=9, session_idle_s=7200)
    assert describe_refusal(refused.value) == [
        "AUTHSVC_MAX_CODE_ATTEMPTS=9 refused: at most 5",
        "AUTHSVC_SESSION_IDLE_S=7200 refused: at most 1800",
    ]
