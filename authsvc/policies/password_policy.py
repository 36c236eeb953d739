"""Password policy (CNIL 2022-100, ASVS): 12 to 128 characters, not common, not the login.

"Common" is judged by zxcvbn, whose dictionaries hold the most used passwords, names and
keyboard patterns: a score under 3 ("safely unguessable" starts at 3) is refused.
"""

from __future__ import annotations

from zxcvbn import zxcvbn

from authsvc.errors import Failure

MIN_LENGTH = 12
MAX_LENGTH = 128
MIN_SCORE = 3


def weak(message: str, field: str) -> Failure:
    return Failure("INVALID_ARGUMENT", "WEAK_PASSWORD", message, metadata={"field": field})


def check(password: str, *, login: str, other_inputs: list[str], field: str = "password") -> None:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise weak(f"a password has {MIN_LENGTH} to {MAX_LENGTH} characters", field)
    if login.casefold() in password.casefold():
        raise weak("a password must not contain the login", field)
    # zxcvbn's cost grows with length; the first 100 characters decide well enough.
    if zxcvbn(password[:100], user_inputs=[login, *other_inputs])["score"] < MIN_SCORE:
        raise weak("this password is too common or too easy to guess", field)
