"""The event loop of the long-running commands (`serve`, its workers, `dispatch`).

uvloop (libuv) spends less CPU per event than asyncio's own loop, and a gRPC call is a handful
of events; AUTHSVC_UVLOOP=false keeps asyncio's loop. One-shot commands (migrate, seed, ...)
keep asyncio.run: their time goes to the database, not to the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop]:
    return uvloop.new_event_loop if use_uvloop else asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool) -> T:
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(main)
