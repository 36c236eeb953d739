"""What a fault cost the simulated people, counted by each Locust process (the kill run).

- a code is *received* when the SMS sink handed it to the user; it is *lost* when its Verify then
  never answered (UNAVAILABLE on every retry) or answered a refusal that is not the user's doing
  (the code is right, the flow was open): the service forgot or broke the challenge;
- `verify_unanswered`: a Verify whose first try got UNAVAILABLE and whose retry found the flow
  completed (FLOW_COMPLETED): the dead replica committed the decision (session included) and
  died before answering. Nothing is half-written and the code did its job, but that user has
  no session and logs in again; counted apart, never hidden among the verified;
- a session is *issued* when Login or Verify returned it; it is *lost* when ValidateSession,
  right after and (LOADTEST_KEEP_SESSIONS=1) once more when the run ends, rejects it;
- `unavailable`: calls answered UNAVAILABLE (each is retried on the next replica).

Counts only (never a token or a code) go to LOADTEST_LEDGER_DIR/ledger-<pid>.json when the run
stops; loadtests/run.py adds the processes' files up.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

# A call refused with UNAVAILABLE is tried this many times more (HAProxy sends the retry to
# another replica; the health checks take the dead one out within half a second).
RETRIES = 6
RETRY_PAUSE_S = 0.2
# Verify's answer for a flow the same code already completed.
ALREADY_COMPLETED = "FLOW_COMPLETED"
KEEP_SESSIONS = os.environ.get("LOADTEST_KEEP_SESSIONS") == "1"


@dataclass
class Ledger:
    codes_received: int = 0
    codes_verified: int = 0
    codes_lost: int = 0
    verify_unanswered: int = 0
    sessions_issued: int = 0
    sessions_lost: int = 0
    sessions_revalidated: int = 0
    unavailable: int = 0
    # Sessions kept for the end-of-run check (in memory only): (token, client ip).
    kept: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {name: value for name, value in asdict(self).items() if name != "kept"}

    def write(self) -> None:
        directory = os.environ.get("LOADTEST_LEDGER_DIR")
        if directory:
            path = Path(directory) / f"ledger-{os.getpid()}.json"
            path.write_text(json.dumps(self.counts()))


LEDGER = Ledger()


def total(directory: Path) -> dict[str, int]:
    """The processes' counts added up (what run.py reports)."""
    summed: dict[str, int] = {}
    for path in sorted(directory.glob("ledger-*.json")):
        for name, value in json.loads(path.read_text()).items():
            summed[name] = summed.get(name, 0) + int(value)
    return summed
