"""A REMOVE_FACTOR grant's values name the factor: one factor id, one spelling, its own digest;
the other actions' canonical values stay what they were before the field existed."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authsvc.errors import Failure
from authsvc.flows import grants
from authsvc.policies.permissions import Action


def _values(action: Action, factor_id: str | None) -> grants.ActionValues:
    return grants.normalise(
        action,
        email=None,
        phone=None,
        display_name=None,
        login=None,
        role=None,
        service_codes=[],
        catalogue={},
        default_region="FR",
        factor_id=factor_id,
    )


@given(st.uuids(), st.uuids())
def test_a_removal_binds_its_factor_in_any_spelling(one: uuid.UUID, other: uuid.UUID) -> None:
    target = uuid.uuid4()
    lower = _values(Action.REMOVE_FACTOR, str(one)).canonical(Action.REMOVE_FACTOR, target)
    upper = _values(Action.REMOVE_FACTOR, str(one).upper()).canonical(Action.REMOVE_FACTOR, target)
    assert lower == upper
    assert json.loads(lower)["factor_id"] == str(one)
    elsewhere = _values(Action.REMOVE_FACTOR, str(other)).canonical(Action.REMOVE_FACTOR, target)
    assert (lower == elsewhere) == (one == other)


@pytest.mark.parametrize("factor_id", [None, "", "nope", "0" * 32, "{" + "0" * 34 + "}"])
def test_a_removal_needs_a_factor_id(factor_id: str | None) -> None:
    with pytest.raises(Failure) as refused:
        _values(Action.REMOVE_FACTOR, factor_id)
    assert (refused.value.reason, refused.value.metadata) == (
        "INVALID_FIELD",
        {"field": "new_values.factor_id"},
    )


def test_other_actions_take_no_factor_id_and_keep_their_canonical_values() -> None:
    with pytest.raises(Failure) as refused:
        _values(Action.ENROLL_FACTOR, str(uuid.uuid4()))
    assert refused.value.metadata == {"field": "new_values.factor_id"}
    # The string every earlier grant of this action was bound to (no factor_id key in it).
    assert _values(Action.CHANGE_OWN_PASSWORD, None).canonical(
        Action.CHANGE_OWN_PASSWORD, None
    ) == (
        '{"action": "change_own_password", "display_name": null, "email": null, "login": null, '
        '"phone": null, "role": null, "service_codes": [], "target": ""}'
    )
