"""A relay and its members made with the command line, for the CLI and browser suites."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from authsvc.cli import main

RELAY = "21180001500011"
MEMBER_A = "21800000000008"
MEMBER_B = "21800000100006"


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert isinstance(done.value.code, int)
    return done.value.code


def build_relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A relay and two members: A's only administrator never signed in, B has ready accounts."""
    monkeypatch.setenv("AUTHSVC_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("AUTHSVC_SECRET_KEY_FILE", str(tmp_path / "secret.key"))
    monkeypatch.setenv("AUTHSVC_EMAIL_PROVIDER", "file")
    monkeypatch.setenv("AUTHSVC_OUTBOX_FILE", str(tmp_path / "outbox.jsonl"))
    monkeypatch.setenv("AUTHSVC_BOOTSTRAP_PASSWORD", "a long enough password")
    assert run(["migrate"]) == 0
    for siret, name, phone in (
        (RELAY, "CDG 18", "+33612345601"),
        (MEMBER_A, "Mairie d'Aubigny", "+33612345602"),
        (MEMBER_B, "Mairie de Bourges", "+33612345603"),
    ):
        assert (
            run(
                [
                    "bootstrap",
                    "--org-siret",
                    siret,
                    "--org-name",
                    name,
                    "--admin-login",
                    "admin",
                    "--admin-email",
                    f"admin@{siret}.example",
                    "--admin-phone",
                    phone,
                ]
            )
            == 0
        )
    rows = [["login", "display_name", "email", "phone", "role"]]
    rows += [
        [f"agent{i}", f"Agent {i}", f"agent{i}@bourges.example", f"06 11 22 33 {i:02d}", "member"]
        for i in range(6)
    ]
    rows += [["sansnum", "Sans Numéro", "sansnum@bourges.example", "", "member"]]
    path = tmp_path / "accounts.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    assert run(["import-accounts", str(path), "--org", MEMBER_B]) == 0  # imported, one not ready
    # B's accounts that signed in once (their phone got a code): ready.
    with sqlite3.connect(tmp_path / "cli.db") as db:
        db.execute(
            "UPDATE accounts SET status = 'active', phone_verified_at = created_at "
            "WHERE login IN ('admin', 'agent0', 'agent1', 'agent2') AND organization_id = "
            "(SELECT id FROM organizations WHERE siret = ?)",
            (MEMBER_B,),
        )
    members = tmp_path / "members.csv"
    members.write_text(f"siret;nom\n{MEMBER_A};Aubigny\n{MEMBER_B};Bourges\n")
    assert run(["relay", "import", "--relay", RELAY, str(members)]) == 0
    return tmp_path
