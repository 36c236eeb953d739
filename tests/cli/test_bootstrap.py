"""`authsvc migrate` and `authsvc bootstrap`: the first organisation and administrator."""

from __future__ import annotations

from pathlib import Path

import pytest

from authsvc.cli import main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    database = tmp_path / "cli.db"
    monkeypatch.setenv("AUTHSVC_DATABASE_URL", f"sqlite+aiosqlite:///{database}")
    monkeypatch.setenv("AUTHSVC_SECRET_KEY_FILE", str(tmp_path / "secret.key"))
    monkeypatch.setenv("AUTHSVC_BOOTSTRAP_PASSWORD", "a long enough password")
    with pytest.raises(SystemExit) as migrated:
        main(["migrate"])
    assert migrated.value.code == 0
    return database


def bootstrap(**overrides: str) -> int:
    options = {
        "--org-siret": "21180001500011",
        "--org-name": "Mairie de Bourges",
        "--admin-login": "admin",
        "--admin-email": "admin@bourges.example",
        "--admin-phone": "+33612345678",
    }
    options.update(overrides)
    with pytest.raises(SystemExit) as exited:
        main(["bootstrap", *[part for pair in options.items() for part in pair]])
    code = exited.value.code
    assert isinstance(code, int)
    return code


def test_bootstrap_creates_org_and_admin_once(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bootstrap() == 0
    assert "created" in capsys.readouterr().err
    assert bootstrap() == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--org-siret", "21180001500012", "organization_siret"),
        ("--admin-email", "not-an-email", "email"),
        ("--admin-phone", "+33 8 99 23 45 67", "phone"),
        ("--admin-phone", "12", "phone"),
        ("--admin-login", "bad login", "login"),
    ],
)
def test_bootstrap_refuses_invalid_input_clearly_and_writes_nothing(
    env: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, field: str
) -> None:
    assert bootstrap(**{option: value}) == 2
    assert f"bootstrap refused: {field}:" in capsys.readouterr().err
    assert bootstrap() == 0  # nothing half-written blocks a correct retry
