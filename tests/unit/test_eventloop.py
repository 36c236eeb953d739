"""The long-running commands' event loop: uvloop, or asyncio's own when the setting says so."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from authsvc import eventloop
from authsvc.config import Settings


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_the_setting_chooses_the_loop() -> None:
    assert isinstance(eventloop.run(_running_loop(), use_uvloop=True), uvloop.Loop)
    plain = eventloop.run(_running_loop(), use_uvloop=False)
    assert not isinstance(plain, uvloop.Loop)
    assert isinstance(plain, asyncio.BaseEventLoop)


def test_uvloop_is_the_default_and_the_environment_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AUTHSVC_UVLOOP", raising=False)
    assert Settings().uvloop is True
    monkeypatch.setenv("AUTHSVC_UVLOOP", "false")
    assert Settings().uvloop is False
