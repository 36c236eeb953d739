"""`authsvc import-accounts` and `authsvc readiness`: migrate accounts, see what is not ready."""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
from pathlib import Path

import pytest
from relay_setup import give_other_factors

from authsvc.cli import main

SIRET = "21180001500011"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTHSVC_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("AUTHSVC_SECRET_KEY_FILE", str(tmp_path / "secret.key"))
    monkeypatch.setenv("AUTHSVC_EMAIL_PROVIDER", "file")
    monkeypatch.setenv("AUTHSVC_OUTBOX_FILE", str(tmp_path / "outbox.jsonl"))
    monkeypatch.setenv("AUTHSVC_BOOTSTRAP_PASSWORD", "a long enough password")
    for argv in (
        ["migrate"],
        [
            "bootstrap",
            "--org-siret",
            SIRET,
            "--org-name",
            "Mairie",
            "--admin-login",
            "admin",
            "--admin-email",
            "admin@mairie.example",
            "--admin-phone",
            "+33612345678",
        ],
    ):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    return tmp_path


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert isinstance(done.value.code, int)
    return done.value.code


def test_import_keeps_every_row_and_reports_the_not_ready(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        ["login", "display_name", "email", "phone", "role"],
        ["agent1", "Agent Un", "agent1@mairie.example", "06 11 22 33 44", "member"],
        ["agent2", "Agent Deux", "agent2@mairie.example", "02 48 12 34 56", "member"],
        ["agent3", "Agent Trois", "agent3@mairie.example", "", "member"],
        ["agent4", "Agent Quatre", "agent4@mairie.example", "12345", "admin"],
        ["agent1", "Doublon", "dup@mairie.example", "06 11 22 33 45", "member"],
        ["bad login", "X", "x@mairie.example", "06 11 22 33 46", "member"],
        ["agent5", "Agent Cinq", "not-an-email", "06 11 22 33 47", "member"],
    ]
    path = env / "accounts.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    capsys.readouterr()
    assert run(["import-accounts", str(path), "--org", SIRET]) == 1  # some rows rejected
    out = capsys.readouterr().out
    assert "imported: 4, not ready: 2, rejected: 3" in out
    assert "line 4: agent3: no phone" in out and "line 5: agent4: invalid phone" in out
    assert "line 6: agent1: login: already taken" in out
    assert "line 7: bad login" in out and "line 8: agent5: email" in out
    with sqlite3.connect(env / "cli.db") as db:  # activation links queued, one per import
        queued = db.execute(
            "SELECT count(*) FROM outbox_messages WHERE template = 'activation'"
        ).fetchone()
    assert queued == (4,)

    # agent3 (no phone) has an app: information, it stays not ready.
    database_url = f"sqlite+aiosqlite:///{env / 'cli.db'}"
    asyncio.run(give_other_factors(database_url, SIRET, apps=("agent3",)))
    assert run(["readiness", "--org", SIRET, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accounts_total"] == 5 and report["without_phone"] == 2
    assert report["other_factors"] == {"with_authenticator_app": 1, "with_passkey": 0}
    assert {a["login"]: a["other_factors"] for a in report["accounts"]}["agent3"] == ["totp"]
    assert {a["login"] for a in report["accounts"] if a["other_factors"]} == {"agent3"}
    assert report["pending_activation"] == 4 and report["administrators"] == 1
    assert {(a["login"], a["issue"]) for a in report["accounts"]} >= {
        ("agent3", "no_phone"),
        ("agent4", "invalid_phone"),
        ("agent1", "pending_activation"),
    }
    assert "+33611223344" not in json.dumps(report)

    assert run(["readiness", "--org", SIRET, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "account_id,login,display_name,issue,other_factors" and len(lines) > 5
    rows_of_agent3 = [row for row in csv.DictReader(lines) if row["login"] == "agent3"]
    assert rows_of_agent3 and all(row["other_factors"] == "totp" for row in rows_of_agent3)
    assert run(["readiness", "--org", SIRET]) == 0
    table = capsys.readouterr().out
    assert "without phone" in table
    assert "other factors (information, not part of readiness)" in table
    assert "with authenticator app" in table
