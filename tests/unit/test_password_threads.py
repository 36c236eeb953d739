"""argon2 runs off the event loop, on threads that yield the CPU to it under load."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from authsvc.passwords import HASH_THREAD_NICE, Passwords


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
async def test_hashing_threads_run_at_a_lower_priority_than_the_event_loop() -> None:
    passwords = Passwords(memory_kib=19 * 1024, time_cost=2, parallelism=1, threads=2)
    try:
        loop_thread = threading.get_native_id()

        def where() -> tuple[int, int]:
            me = threading.get_native_id()
            return me, os.getpriority(os.PRIO_PROCESS, me)

        thread_id, nice = await asyncio.get_running_loop().run_in_executor(passwords._pool, where)
        assert thread_id != loop_thread
        assert nice >= HASH_THREAD_NICE
        assert os.getpriority(os.PRIO_PROCESS, loop_thread) < HASH_THREAD_NICE
        assert await passwords.verify(await passwords.hash_async("x" * 12), "x" * 12)
    finally:
        passwords.close()
