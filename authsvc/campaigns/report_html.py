"""The readiness report as one self-contained HTML page (`authsvc readiness --format html`).

No network: styles inline, the trend an inline SVG, and a Content-Security-Policy that forbids
every fetch, so the page opens the same from a mail attachment or an air-gapped laptop. Every
figure sits in an element with a `data-figure` attribute inside its organisation's section
(`data-siret`), which is what the browser test compares with the report's JSON.
"""

from __future__ import annotations

from html import escape
from typing import Any

_ISSUES = {
    "no_phone": "aucun numéro",
    "invalid_phone": "numéro ne pouvant pas recevoir de code",
    "phone_unverified": "numéro jamais vérifié",
    "pending_activation": "compte non activé",
}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1e1e1e;max-width:60rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin:0 0 .5rem}
section.org{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1rem 0}
section.org.alert{border-color:#c0392b;border-width:2px}
.bar{background:#eee;border-radius:4px;height:1.1rem;overflow:hidden;margin:.3rem 0}
.bar>span{display:block;height:100%;background:#2e8540}
.alert-note{color:#c0392b;font-weight:600}
table{border-collapse:collapse}td,th{padding:.15rem .6rem;text-align:left;font-size:.9rem}
dl{display:grid;grid-template-columns:max-content max-content;gap:.1rem 1rem}dd{margin:0}
"""
_LABELS = (
    ("accounts_total", "Comptes"),
    ("ready", "Prêts"),
    ("without_phone", "Sans numéro utilisable"),
    ("pending_activation", "Non activés"),
    ("administrators", "Administrateurs actifs"),
    ("ready_administrators", "Administrateurs prêts"),
)

# Information, apart from the figures above: no other factor makes an account ready.
_OTHER_FACTORS = (
    ("with_authenticator_app", "Avec une application d'authentification"),
    ("with_passkey", "Avec une clé d'accès (passkey)"),
)
_FACTOR_NAMES = {"totp": "application d'authentification", "passkey": "clé d'accès"}


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 100.0


def _trend_svg(trend: list[dict[str, Any]]) -> str:
    """Ready accounts per day, as a share of the accounts: a polyline over 0-100 %."""
    width, height, pad = 480, 120, 24
    if not trend:
        return '<p data-figure="trend_days">0</p><p>Aucune mesure quotidienne encore.</p>'
    step = (width - 2 * pad) / max(len(trend) - 1, 1)
    points = []
    for index, day in enumerate(trend):
        share = _percent(day["ready"], day["accounts_total"])
        x = pad + index * step
        y = height - pad - (height - 2 * pad) * share / 100
        points.append((x, y, day, share))
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" data-day="{escape(day["day"])}" '
        f'data-ready="{day["ready"]}" data-total="{day["accounts_total"]}">'
        f"<title>{escape(day['day'])} : {day['ready']} prêts sur {day['accounts_total']}"
        f"</title></circle>"
        for x, y, day, _ in points
    )
    first, last = escape(trend[0]["day"]), escape(trend[-1]["day"])
    return (
        f'<svg class="trend" role="img" aria-label="Comptes prêts par jour" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        f'stroke="#999"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
        f'<text x="2" y="{pad + 4}" font-size="10">100 %</text>'
        f'<text x="2" y="{height - pad + 4}" font-size="10">0 %</text>'
        f'<text x="{pad}" y="{height - 6}" font-size="10">{first}</text>'
        f'<text x="{width - pad}" y="{height - 6}" font-size="10" text-anchor="end">{last}</text>'
        f'<polyline fill="none" stroke="#2e8540" stroke-width="2" points="{path}"/>{dots}</svg>'
        f'<p>Jours mesurés : <span data-figure="trend_days">{len(trend)}</span></p>'
    )


def _organization(entry: dict[str, Any]) -> str:
    total, ready = entry["accounts_total"], entry["ready"]
    share = _percent(ready, total)
    alert = entry["without_ready_administrator"]
    figures = "".join(
        f'<dt>{label}</dt><dd data-figure="{key}">{entry[key]}</dd>' for key, label in _LABELS
    )
    others = entry["other_factors"]
    other_figures = "".join(
        f'<dt>{label}</dt><dd data-figure="{key}">{others[key]}</dd>'
        for key, label in _OTHER_FACTORS
    )
    admins = (
        "".join(
            f"<li>{escape(a['display_name'])} · {escape(a['masked_email'])} · "
            f"{escape(a['masked_phone'])}</li>"
            for a in entry["administrator_contacts"]
        )
        or "<li>aucun</li>"
    )
    campaign = entry["campaign"]
    campaign_text = (
        f"Campagne {'en cours' if campaign['running'] else 'terminée'} : "
        f'<span data-figure="campaign_recipients">{campaign["recipients"]}</span> comptes '
        f'relancés, <span data-figure="campaign_became_ready">{campaign["became_ready"]}</span> '
        f'devenus prêts, <span data-figure="campaign_emails_sent">{campaign["emails_sent"]}</span>'
        " courriels envoyés."
        if campaign["campaign_id"]
        else "Aucune campagne."
    )
    rows = "".join(
        f'<tr data-account="{escape(item["account"])}"><td>{escape(item["account"])}</td>'
        f"<td>{escape(', '.join(_ISSUES[i] for i in item['issues']))}</td>"
        f"<td data-other-factors>"
        f"{escape(', '.join(_FACTOR_NAMES[k] for k in item['other_factors']) or '—')}</td></tr>"
        for item in entry["not_ready"]
    )
    table = (
        "<table><thead><tr><th>Compte</th><th>Ce qui manque</th>"
        "<th>Autres facteurs (pour information)</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if rows
        else "<p>Tous les comptes sont prêts.</p>"
    )
    note = (
        '<p class="alert-note" data-figure="without_ready_administrator">Aucun administrateur '
        "ne peut agir : cette organisation ne peut rien corriger seule.</p>"
        if alert
        else ""
    )
    return (
        f'<section class="org{" alert" if alert else ""}" data-siret="{escape(entry["siret"])}">'
        f"<h2>{escape(entry['name'])} ({escape(entry['siret'])})</h2>{note}"
        f'<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
        f'aria-valuenow="{share}"><span style="width:{share}%"></span></div>'
        f'<p><span data-figure="ready_percent">{share}</span> % des comptes prêts</p>'
        f"<dl>{figures}</dl><h3>Autres facteurs, pour information</h3>"
        "<p>Ils n'entrent pas dans les comptes prêts : un compte est prêt avec son numéro "
        "vérifié, qu'il ait ou non une application d'authentification ou une clé d'accès.</p>"
        f'<dl class="information">{other_figures}</dl><h3>Administrateurs</h3><ul>{admins}</ul>'
        f"<p>{campaign_text}</p><h3>Tendance</h3>{_trend_svg(entry['trend'])}"
        f"<h3>Comptes à préparer ({len(entry['not_ready'])})</h3>{table}</section>"
    )


def render(report: dict[str, Any]) -> str:
    title = escape(report["title"])
    body = "".join(_organization(entry) for entry in report["organizations"])
    return (
        '<!DOCTYPE html>\n<html lang="fr"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>Préparation : {title}</title><style>{_STYLE}</style></head>\n<body>"
        f"<h1>Préparation de la connexion en deux étapes : {title}</h1>"
        f'<p>Établi le <time data-figure="generated_at">{escape(report["generated_at"])}</time>, '
        f'<span data-figure="organizations">{len(report["organizations"])}</span> '
        f"organisation(s).</p>{body}</body></html>\n"
    )
