"""Field validation: SIRET check digits, logins, codes, tokens, addresses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given
from hypothesis import strategies as st

from authsvc import validation
from authsvc.errors import Failure
from authsvc.v1 import account_service_pb2, auth_service_pb2


def luhn_complete(body: str) -> str:
    for digit in "0123456789":
        try:
            return validation.siret(body + digit)
        except Failure:
            continue
    raise AssertionError("some check digit always completes a Luhn number")


@given(
    st.text(alphabet="0123456789", min_size=13, max_size=13).filter(
        lambda body: not body.startswith("356000000")
    )
)
def test_exactly_one_check_digit_completes_a_siret(body: str) -> None:
    valid = [d for d in "0123456789" if _accepted(body + d)]
    assert len(valid) == 1
    assert luhn_complete(body) == body + valid[0]


def _accepted(value: str) -> bool:
    try:
        validation.siret(value)
    except Failure as failure:
        assert failure.reason == "INVALID_FIELD"
        return False
    return True


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("73282932000074", True),  # a real, published SIRET
        ("21180001500011", True),
        ("73282932000075", False),
        ("35600000000010", True),  # La Poste: digit sum multiple of 5, not Luhn
        ("35600000000011", False),
        ("7328293200007", False),
        ("7328293200007a", False),
        ("", False),
    ],
)
def test_siret_examples(value: str, ok: bool) -> None:
    assert _accepted(value) is ok


@given(st.text(max_size=80))
def test_code_accepts_exactly_six_ascii_digits(value: str) -> None:
    expected = len(value) == 6 and all(c in "0123456789" for c in value)
    try:
        validation.code(value, 6)
        accepted = True
    except Failure as failure:
        assert failure.metadata == {"field": "code"}
        accepted = False
    assert accepted is expected


@given(st.text(max_size=80))
def test_login_never_accepts_space_or_control_characters(value: str) -> None:
    try:
        validation.login(value)
    except Failure:
        return
    assert 1 <= len(value) <= 64 and value.isascii() and value.isprintable() and " " not in value


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("203.0.113.7", True),
        ("2001:db8::1", True),
        ("", True),
        ("1.2.3", False),
        ("::ffff:999.0.0.1", False),
        ("localhost", False),
    ],
)
def test_ip_address(value: str, ok: bool) -> None:
    try:
        validation.ip_address(value)
        accepted = True
    except Failure:
        accepted = False
    assert accepted is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("agent@mairie-bourges.fr", True),
        ("a.b+c@x.example", True),
        ("no-at.example", False),
        ("a@b", False),
        ("a b@x.fr", False),
        ("a@-x.fr", False),
        ("a\x00b@example.fr", False),
        ("a\x7fb@example.fr", False),
        ("x" * 65 + "@x.fr", False),
    ],
)
def test_email(value: str, ok: bool) -> None:
    try:
        validation.email(value)
        accepted = True
    except Failure:
        accepted = False
    assert accepted is ok


def _string_paths(
    descriptor: Any, prefix: tuple[str, ...] = (), depth: int = 0
) -> Iterator[tuple[str, ...]]:
    """Every string field reachable from a message type, as a path of field names."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            yield (*prefix, field.name)
        elif (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and depth < 3
            and not field.message_type.GetOptions().map_entry
        ):
            yield from _string_paths(field.message_type, (*prefix, field.name), depth + 1)


def _requests() -> list[Any]:
    found = []
    for module in (auth_service_pb2, account_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            found += [method.input_type for method in service.methods]
    return found


def _set(message: Any, path: tuple[str, ...], text: str) -> None:
    for name in path[:-1]:
        field = message.DESCRIPTOR.fields_by_name[name]
        message = getattr(message, name).add() if field.is_repeated else getattr(message, name)
    field = message.DESCRIPTOR.fields_by_name[path[-1]]
    if field.is_repeated:
        getattr(message, path[-1]).extend(["clean", text])
    else:
        setattr(message, path[-1], text)


CASES = [(request, path) for request in _requests() for path in _string_paths(request)]


@pytest.mark.parametrize(("descriptor", "path"), CASES, ids=lambda c: getattr(c, "name", c))
@given(
    before=st.text(alphabet=st.characters(categories=["L", "N"]), max_size=3),
    control=st.characters(categories=["Cc"]),
)
def test_a_control_character_in_any_string_field_of_any_request_is_refused_by_name(
    descriptor: Any, path: tuple[str, ...], before: str, control: str
) -> None:
    cls = message_factory.GetMessageClass(descriptor)
    clean = cls()
    _set(clean, path, before + "x")
    validation.no_control_characters(clean)
    dirty = cls()
    _set(dirty, path, before + control)
    with pytest.raises(Failure) as refused:
        validation.no_control_characters(dirty)
    assert refused.value.metadata["field"] == ".".join(path)
