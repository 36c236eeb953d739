"""Locust entry point: `locust -f loadtests/locustfile.py` (loadtests/run.py does it for you).

The grpc gevent integration is set up by importing loadtests.grpc_user before anything else.
The scenario is LOADTEST_SCENARIO (default national_peak); its shape and the user classes of
LOADTEST_MIX are what Locust finds in this module.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import loadtests.grpc_user  # noqa: F401  (init_gevent before any channel)
from loadtests import users
from loadtests.scenarios import SCENARIOS

_scenario = os.environ.get("LOADTEST_SCENARIO", "national_peak")
if _scenario not in SCENARIOS:
    raise SystemExit(f"LOADTEST_SCENARIO: one of {sorted(SCENARIOS)}")
Shape = SCENARIOS[_scenario]

for _cls in users.apply_mix():
    globals()[_cls.__name__] = _cls
del _cls
