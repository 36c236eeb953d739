"""`authsvc relay`, `authsvc campaign` and `authsvc readiness --relay`: a relay's morning from the
command line (what the README shows): import members, start a campaign, open the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from relay_setup import MEMBER_A, MEMBER_B, RELAY, build_relay, run


def test_a_relays_morning_from_the_command_line(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build_relay(tmp_path, monkeypatch, database_url)
    capsys.readouterr()
    assert run(["relay", "list", "--relay", RELAY]) == 0
    assert capsys.readouterr().out.split("\n")[:3] == [
        "members: 2",
        f"  {MEMBER_A}  Mairie d'Aubigny",
        f"  {MEMBER_B}  Mairie de Bourges",
    ]
    assert run(["campaign", "start", "--relay", RELAY]) == 0
    # A: its administrator (never signed in); B: 3 agents unverified, one without phone.
    assert "5 accounts to email" in capsys.readouterr().out
    assert run(["campaign", "run"]) == 0
    assert "emails queued: 5" in capsys.readouterr().out
    assert run(["campaign", "run"]) == 0
    assert "emails queued: 0" in capsys.readouterr().out  # one per account per round

    assert run(["readiness", "--relay", RELAY, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    first, second = report["organizations"]
    assert (first["siret"], first["without_ready_administrator"]) == (MEMBER_A, True)
    assert (second["siret"], second["ready"], second["accounts_total"]) == (MEMBER_B, 4, 8)
    assert second["campaign"]["emails_sent"] == 4 and len(second["trend"]) == 1
    assert {item["account"] for item in second["not_ready"]} == {"s•••@bourges.example"} | {
        "a•••@bourges.example"
    }
    assert "agent3" not in json.dumps(report)  # accounts appear masked only
    # The other factors, apart from the readiness counts: B's two confirmed apps (not the
    # pending enrolment) and its passkey; A's passkey in A only. Nobody became ready by them.
    assert second["other_factors"] == {"with_authenticator_app": 2, "with_passkey": 1}
    assert first["other_factors"] == {"with_authenticator_app": 0, "with_passkey": 1}
    assert first["ready"] == 0
    assert sorted(item["other_factors"] for item in second["not_ready"]) == [[], [], [], ["totp"]]
    assert [item["other_factors"] for item in first["not_ready"]] == [["passkey"]]

    assert run(["readiness", "--relay", RELAY]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[-3:] == ["app*", "passkey*", "name"]
    assert table[2].split()[:2] == [MEMBER_A, "0/1"] and "no administrator can act" in table[2]
    assert table[3].split()[:6] == [MEMBER_B, "4/8", "1", "4", "2", "1"]
    assert "information, not part of readiness" in table[4]

    out = tmp_path / "report.html"
    assert run(["readiness", "--relay", RELAY, "--format", "html", "-o", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "default-src 'none'" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page

    assert run(["relay", "remove", "--relay", RELAY, MEMBER_A]) == 0
    assert "removed: 1" in capsys.readouterr().out
    assert run(["relay", "add", "--relay", RELAY, "12345678901234"]) == 2
    assert "SIRET" in capsys.readouterr().err


def test_readiness_of_an_organisation_that_is_no_relay_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build_relay(tmp_path, monkeypatch)
    capsys.readouterr()
    assert run(["readiness", "--relay", MEMBER_A, "--format", "json"]) == 2
    assert "NOT_A_RELAY" in capsys.readouterr().err
    assert run(["campaign", "start", "--relay", MEMBER_B]) == 2
