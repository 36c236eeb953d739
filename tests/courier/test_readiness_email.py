"""The readiness campaign's email: what is missing, the link's token only in the text sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authsvc.courier import templates

ISSUES = ["no_phone", "invalid_phone", "phone_unverified", "pending_activation"]
URL = "https://peps.cnracl.example/preparer#jeton={token}"


@given(
    issues=st.lists(st.sampled_from(ISSUES), min_size=1, max_size=4, unique=True),
    token=st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
        min_size=43,
        max_size=43,
    ),
)
def test_the_token_is_in_the_text_and_never_in_the_summary(issues: list[str], token: str) -> None:
    mail = templates.readiness_email(
        display_name="Alice",
        organization_name="Mairie de Vierzon",
        issues=issues,
        service="PEP's",
        link_url=URL,
        link_token=token,
    )
    assert f"#jeton={token}" in mail.text and mail.html is not None and token in mail.html
    assert token not in mail.summary and f"#jeton={templates.MASK}" in mail.summary
    assert token in mail.secrets
    assert mail.text.count("\n- ") == len(issues)  # one line per thing missing
    assert mail.subject == "PEP's : préparez dès maintenant la connexion en deux étapes"


def test_without_a_phone_issue_there_is_no_link() -> None:
    mail = templates.readiness_email(
        display_name="Alice",
        organization_name="Mairie",
        issues=["pending_activation"],
        service="PEP's",
        link_url=URL,
        link_token=None,
    )
    assert "jeton" not in mail.text and mail.secrets == ()
    assert "n'est pas encore activé" in mail.text


def test_unknown_issues_and_links_without_a_token_place_are_refused() -> None:
    with pytest.raises(ValueError):
        templates.readiness_email(
            display_name="A",
            organization_name="O",
            issues=["birthday"],
            service="S",
            link_url=URL,
            link_token="t",
        )
    with pytest.raises(ValueError):
        templates.readiness_email(
            display_name="A",
            organization_name="O",
            issues=[],
            service="S",
            link_url=URL,
            link_token="t",
        )
    with pytest.raises(ValueError):
        templates.readiness_email(
            display_name="A",
            organization_name="O",
            issues=["no_phone"],
            service="S",
            link_url="https://x.example/",
            link_token="t",
        )
