"""argon2id password hashing, run off the event loop.

argon2-cffi releases the GIL inside the C hash, so a thread pool gives real parallelism. Unknown
logins are checked against a dummy hash made with the same parameters, so that they cost the same
time as a wrong password and accounts cannot be enumerated by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from authsvc import metrics, tracing

# Nice value of the hashing threads. When logins saturate the CPU, the event loop (Verify,
# ValidateSession, the rest of every RPC) still runs first: the kernel gives a thread at nice 10
# about a tenth of the CPU share of one at nice 0 when both want it, and all of it otherwise.
HASH_THREAD_NICE = 10


def _yield_to_event_loop() -> None:
    # Linux: PRIO_PROCESS with a thread id sets that thread's nice value only. Raising it needs
    # no privilege; where it is not supported the threads keep the process's priority.
    with contextlib.suppress(OSError, AttributeError):
        current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), max(current, HASH_THREAD_NICE))


class Passwords:
    def __init__(
        self, *, memory_kib: int, time_cost: int, parallelism: int, threads: int = 0
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=threads or os.cpu_count() or 1,
            thread_name_prefix="argon2",
            initializer=_yield_to_event_loop,
        )
        self._dummy_hash = self._hasher.hash(os.urandom(16).hex())
        # Password verifications run so far (the dummy hash's included): what the lockout's
        # bound is about, counted where the work is done (tests and metrics read it).
        self.verifications = 0

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    async def hash_async(self, password: str) -> str:
        with tracing.span("argon2.hash"), metrics.hash_job("hash") as started:

            def job() -> str:
                started()
                return self.hash(password)

            return await asyncio.get_running_loop().run_in_executor(self._pool, job)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy_hash, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when `password` matches `stored`; `stored=None` (no such account) costs the same."""
        self.verifications += 1  # on the event loop: no lock needed
        # The span says nothing of the outcome: a trace must not tell a known login apart.
        with tracing.span("argon2.verify"), metrics.hash_job("verify") as started:

            def job() -> bool:
                started()  # a thread took it: the queue's wait ends
                return self._verify(stored, password)

            return await asyncio.get_running_loop().run_in_executor(self._pool, job)

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
