"""One-time codes, HOTP/TOTP, constant-time checks, tokens and rate limiting.

This is the only module that imports the native core (`authsvc._otp_core`, built from
`otp_core/`); everything else in authsvc imports these names from here.

The names are the native functions and classes themselves, re-exported: the PyO3 glue already
takes keyword-only arguments, refuses `bool` where an `int` is expected (TypeError), and raises
`authsvc.errors.OtpInputError` (a ValueError) for every bad value, so a Python wrapper would
add nothing but a function call (about 0.1 us, as much as a whole `verify_totp`). Their types
come from the hand-written stub `authsvc/_otp_core.pyi`, checked by `mypy.stubtest`.

Codes
    `generate_code(digits=6) -> str`, `generate_codes(n, digits=6) -> list[str]`: uniform over
    all 10**digits values (rejection sampling, no modulo bias), digits 6..10. One code reads the
    OS CSPRNG; a batch uses ChaCha12 freshly seeded from the OS for that call (nothing is kept
    between calls, so forked worker processes never share a random stream).

HOTP / TOTP (RFC 4226 / RFC 6238), algorithm "sha1" | "sha256" | "sha512"
    `hotp(secret, counter, *, digits=6, algorithm="sha1") -> str`
    `totp(secret, at, *, step=30, digits=6, algorithm="sha1", t0=0) -> str`
    `verify_totp(secret, code, at, *, window=1, step=30, digits=6, algorithm="sha1",
    last_used_step=None, t0=0) -> int | None`: the matched time step or None. All
    `2 * window + 1` steps are computed and compared in constant time; a step
    `<= last_used_step` never matches (store the returned step to refuse replays). If two steps
    match, the later one is returned.

Keyed code digests
    `CodeHasher(key).digest(code, context) -> bytes`: HMAC-SHA-256 over
    `len(context).to_bytes(8, "big") + context + code.encode("ascii")`;
    `CodeHasher(key).verify(code, context, digest) -> bool` compares in constant time.

Tokens and comparison
    `constant_time_eq(a, b) -> bool`; `random_token(nbytes=32) -> str` (URL-safe base64, no
    padding, 1..1024 bytes); `token_digest(token) -> bytes` (SHA-256 of the UTF-8 token).

Rate limiting
    `RateLimiter(rate_per_s, burst, *, max_keys=1_000_000)`: GCRA per key, thread-safe
    (32 locked shards), at most `max_keys` keys (idle keys are evicted first, then those with
    the oldest theoretical arrival time). `check(key, cost=1, now=None) -> Decision` with
    `allowed`, `retry_after` (seconds; 0 when allowed; `math.inf` when cost > burst, which is
    never allowed) and `remaining` (unit requests still allowed now). `check_many(keys,
    now=None) -> list[bool]` (unit cost, in order), `reset(key)`, `len()` / `len(limiter)`.
    `now=None` reads the limiter's monotonic clock (seconds since it was created); an explicit
    `now` drives time (tests). Do not mix the two on one limiter: they are different time bases.

Errors
    Bad input (digits out of range, empty secret or key, unknown algorithm, negative counter,
    cost < 1, non-ASCII code, non-finite time, ...) raises `OtpInputError`; a failing OS random
    source raises `OtpEntropyError`. A Rust panic would surface as `pyo3_runtime.PanicException`
    rather than crash the interpreter; the core is written not to panic.
"""

from __future__ import annotations

from authsvc._otp_core import (
    CodeHasher,
    Decision,
    RateLimiter,
    constant_time_eq,
    generate_code,
    generate_codes,
    hotp,
    random_token,
    token_digest,
    totp,
    verify_totp,
)

__all__ = [
    "ALGORITHMS",
    "MAX_DIGITS",
    "MIN_DIGITS",
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

#: HMAC algorithms accepted by `hotp`, `totp` and `verify_totp`.
ALGORITHMS: tuple[str, ...] = ("sha1", "sha256", "sha512")
#: Digit counts accepted for codes.
MIN_DIGITS = 6
MAX_DIGITS = 10
