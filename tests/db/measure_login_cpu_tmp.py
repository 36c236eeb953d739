from __future__ import annotations

import time

from support import PASSWORD, Inbox, Seeded, sign_in

from authsvc.clock import FrozenClock
from authsvc.db import Account
from authsvc.flows import login
from authsvc.server import Server
from sqlalchemy import select

N = 150


async def test_measure(server: Server, stub, alice: Seeded, inbox: Inbox, clock: FrozenClock) -> None:  # type: ignore[no-untyped-def]
    device = (await sign_in(stub, inbox, alice)).device_token
    app = server.app
    client = login.ClientInfo("203.0.113.7", "bench")
    async with app.read() as db:
        stored = await db.scalar(select(Account.password_hash).where(Account.id == alice.account_id))
    for _ in range(10):
        clock.advance(10)
        await login.login_with_password(app, siret=alice.organization_siret, login=alice.login, password=PASSWORD, device_token=device, client=client)
    trips0 = app.db.round_trips.count
    t0 = time.process_time()
    for _ in range(N):
        clock.advance(10)
        await login.login_with_password(app, siret=alice.organization_siret, login=alice.login, password=PASSWORD, device_token=device, client=client)
    t1 = time.process_time()
    trips = (app.db.round_trips.count - trips0) / N
    for _ in range(N):
        await app.passwords.verify(stored, PASSWORD)
    t2 = time.process_time()
    for _ in range(N):
        clock.advance(10)
        try:
            await login.login_with_password(app, siret=alice.organization_siret, login="nobody", password="x", device_token=None, client=client)
        except Exception:
            pass
    t3 = time.process_time()
    login_ms, argon_ms, refused_ms = (t1 - t0) / N * 1000, (t2 - t1) / N * 1000, (t3 - t2) / N * 1000
    print(f"\nMEASURE {app.db.dialect}: trusted login {login_ms:.2f} ms CPU, argon2 verify {argon_ms:.2f} ms, overhead {login_ms - argon_ms:.2f} ms, round trips {trips:.1f}; unknown-login refusal overhead {refused_ms - argon_ms:.2f} ms")
