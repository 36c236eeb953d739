"""`authsvc dev-idp`: a development issuer whose assertions verify against its JWKS."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest

from authsvc.cli import main
from authsvc.config import DEV_ISSUER


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return capsys.readouterr().out.strip()


def test_keygen_then_mint_gives_a_verifiable_short_lived_assertion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = json.loads(run(["dev-idp", "--dir", str(tmp_path), "keygen"], capsys))
    assert config[0]["issuer"] == DEV_ISSUER
    token = run(
        [
            "dev-idp",
            "--dir",
            str(tmp_path),
            "mint",
            "--sub",
            "ne-1",
            "--siret",
            "21180001500011",
            "--ttl",
            "60",
        ],
        capsys,
    )
    jwks = jwt.PyJWKSet.from_dict(json.loads(Path(config[0]["jwks_file"]).read_text()))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(token, key=key, algorithms=["ES256"], audience="authsvc")
    assert (claims["iss"], claims["sub"], claims["siret"]) == (DEV_ISSUER, "ne-1", "21180001500011")
    assert claims["exp"] - claims["iat"] == 60 and claims["jti"]
    # A second keygen rotates: the new key signs, the old one stays published.
    run(["dev-idp", "--dir", str(tmp_path), "keygen"], capsys)
    assert len(json.loads(Path(config[0]["jwks_file"]).read_text())["keys"]) == 2
