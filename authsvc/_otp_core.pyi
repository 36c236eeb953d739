# Hand-written stub of the native module built from otp_core/ (src/python.rs).
# Checked against the built extension by `python -m mypy.stubtest authsvc._otp_core`.
# Import these names through `authsvc.otp`, never from here.

from collections.abc import Iterable
from typing import Self, final

__all__ = [
    "CodeHasher",
    "Decision",
    "RateLimiter",
    "constant_time_eq",
    "generate_code",
    "generate_codes",
    "hotp",
    "random_token",
    "token_digest",
    "totp",
    "verify_totp",
]

def generate_code(digits: int = 6) -> str: ...
def generate_codes(n: int, digits: int = 6) -> list[str]: ...
def hotp(secret: bytes, counter: int, *, digits: int = 6, algorithm: str = "sha1") -> str: ...
def totp(
    secret: bytes,
    at: float,
    *,
    step: int = 30,
    digits: int = 6,
    algorithm: str = "sha1",
    t0: int = 0,
) -> str: ...
def verify_totp(
    secret: bytes,
    code: str,
    at: float,
    *,
    window: int = 1,
    step: int = 30,
    digits: int = 6,
    algorithm: str = "sha1",
    last_used_step: int | None = None,
    t0: int = 0,
) -> int | None: ...
def constant_time_eq(a: bytes, b: bytes) -> bool: ...
def random_token(nbytes: int = 32) -> str: ...
def token_digest(token: str) -> bytes: ...

@final
class CodeHasher:
    def __new__(cls, key: bytes) -> Self: ...
    def digest(self, code: str, context: bytes) -> bytes: ...
    def verify(self, code: str, context: bytes, digest: bytes) -> bool: ...

@final
class Decision:
    @property
    def allowed(self) -> bool: ...
    @property
    def retry_after(self) -> float: ...
    @property
    def remaining(self) -> int: ...

@final
class RateLimiter:
    def __new__(cls, rate_per_s: float, burst: int, *, max_keys: int = 1_000_000) -> Self: ...
    def check(self, key: str, cost: int = 1, now: float | None = None) -> Decision: ...
    def check_many(self, keys: Iterable[str], now: float | None = None) -> list[bool]: ...
    def reset(self, key: str) -> None: ...
    def len(self) -> int: ...
    def __len__(self) -> int: ...
