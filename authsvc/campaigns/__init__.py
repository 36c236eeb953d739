"""Preparing the switch: relays (centres de gestion), readiness campaigns and their reports.

- relays.py: which organisations a relay follows, and what its staff may read of them;
- budget.py: the emails a campaign may still send (per organisation per day, provider per minute);
- campaign.py: start a campaign, run its rounds through the outbox, stop for ready accounts;
- link.py: the single-use link of a campaign email, which opens a contact verification;
- progress.py: one readiness row per organisation per day, the trend;
- report_html.py: the self-contained HTML page of `authsvc readiness --format html`.
"""
