"""`authsvc serve --workers N` in production with the in-process limiter: refused at startup,
since each worker would keep its own buckets and every limit would be multiplied by N."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import TEST_API_KEYS_ENV

PRODUCTION_ENV = {
    "AUTHSVC_ENVIRONMENT": "production",
    "AUTHSVC_SECRET_KEY": "A" * 43,
    "AUTHSVC_SMS_PROVIDER": "http",
    "AUTHSVC_VOICE_PROVIDER": "http",
    "AUTHSVC_EMAIL_PROVIDER": "http",
    "AUTHSVC_SMS_HTTP": '{"url": "https://sms.invalid"}',
    "AUTHSVC_VOICE_HTTP": '{"url": "https://voice.invalid"}',
    "AUTHSVC_EMAIL_HTTP": '{"url": "https://mail.invalid"}',
    "AUTHSVC_TLS_TERMINATED_UPSTREAM": "true",
    "AUTHSVC_RATE_LIMIT_BACKEND": "memory",
    "AUTHSVC_LOG_FORMAT": "json",
}


def test_serve_refuses_workers_with_the_memory_limiter_in_production(tmp_path: Path) -> None:
    env = {
        **os.environ,
        **TEST_API_KEYS_ENV,
        **PRODUCTION_ENV,
        "AUTHSVC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "authsvc", "serve", "--listen", "127.0.0.1:50999", "--workers", "2"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0, done.stderr
    assert "AUTHSVC_RATE_LIMIT_BACKEND=redis" in done.stderr, done.stderr
    assert "multiplied by 2" in done.stderr, done.stderr
    assert "workers started" not in done.stderr  # refused before any fork


def test_development_warns_about_workers_with_the_memory_limiter() -> None:
    from leaks import captured_events

    from authsvc.config import Settings
    from authsvc.workers import check_limiter

    with captured_events() as logs:
        check_limiter(Settings(), 3)
        check_limiter(Settings(), 1)
        check_limiter(Settings(rate_limit_backend="redis"), 3)
    assert [line["log_level"] for line in logs] == ["warning"]
    assert "multiplied by 3" in logs[0]["event"]
