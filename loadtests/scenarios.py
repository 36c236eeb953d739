"""Scenarios as Locust load shapes.

`national_peak`: the morning wave of a deadline day (reference: impots.gouv.fr, 2019 income-tax
deadline, more than 3 million logins in under 30 minutes, about 1,700 logins/s). Users arrive
over LOADTEST_RAMP_S seconds up to LOADTEST_USERS, stay LOADTEST_PEAK_S seconds at the peak,
then leave over LOADTEST_RAMPDOWN_S seconds, and the run stops by itself. The mix of people is
LOADTEST_MIX (loadtests/users.py); each user starts a journey every LOADTEST_PACING_S seconds,
so the offered login rate at the peak is about USERS / PACING_S.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from locust import LoadTestShape


@dataclass(frozen=True)
class Wave:
    users: int
    ramp_s: float
    peak_s: float
    rampdown_s: float

    @classmethod
    def from_env(cls) -> Wave:
        return cls(
            users=int(os.environ.get("LOADTEST_USERS", "60")),
            ramp_s=float(os.environ.get("LOADTEST_RAMP_S", "20")),
            peak_s=float(os.environ.get("LOADTEST_PEAK_S", "40")),
            rampdown_s=float(os.environ.get("LOADTEST_RAMPDOWN_S", "5")),
        )

    @property
    def duration_s(self) -> float:
        return self.ramp_s + self.peak_s + self.rampdown_s

    def users_at(self, t: float) -> int | None:
        """How many users at `t` seconds into the run; None once the wave is over."""
        if t >= self.duration_s:
            return None
        if t < self.ramp_s:
            return max(1, math.ceil(self.users * t / self.ramp_s))
        if t < self.ramp_s + self.peak_s:
            return self.users
        left = (self.duration_s - t) / self.rampdown_s if self.rampdown_s else 0.0
        return max(1, math.ceil(self.users * left))


class NationalPeak(LoadTestShape):
    wave = Wave.from_env()

    def tick(self) -> tuple[int, float] | None:
        users = self.wave.users_at(self.get_run_time())  # type: ignore[no-untyped-call]
        if users is None:
            return None
        spawn_rate = max(self.wave.users / max(self.wave.ramp_s, 1.0), 1.0)
        return users, spawn_rate


SCENARIOS = {"national_peak": NationalPeak}
