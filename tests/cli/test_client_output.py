"""`authsvc client` prints its answers as UTF-8 JSON: masked numbers keep their bullets."""

from __future__ import annotations

import json

import pytest

from authsvc import cli
from authsvc.v1 import auth_service_pb2 as pb


def test_masked_destination_is_printed_as_utf8(capsys: pytest.CaptureFixture[str]) -> None:
    cli._show(pb.ChallengeResponse(masked_destination="+33 6 •• •• •• 78"))
    printed = capsys.readouterr().out
    assert "\\u2022" not in printed
    assert json.loads(printed) == {"masked_destination": "+33 6 •• •• •• 78"}
    assert "+33 6 •• •• •• 78" in printed
