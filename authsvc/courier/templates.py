"""Message texts, in French, in one place: edit the wording here and nowhere else.

- `code_text(channel, purpose=..., code=..., minutes=..., service=..., domain=...)`: the text
  that carries a one-time code. The SMS names the service, gives the code and its lifetime, warns
  never to share it, and ends with the WebOTP line (`@domain #code`) so that browsers can offer to
  fill the code in; it stays within one GSM-7 segment (no ê, ç, curly quotes...). The voice text
  reads the digits one by one, twice. For email it is the plain-text body.
- `email(kind, **fields)`: notifications and activation (subject, plain text, and an HTML
  alternative made from the same paragraphs).

Both come as a `Rendered`: the text to send, and what may be kept of it for good. A secret (a code,
an activation token) reaches a template only as a `Secret`, which refuses to be formatted as is:
the template picks the form it writes (`.plain`, `.spoken`). The template is then rendered a second
time with placeholders in place of every secret, and that rendering is the `summary` kept after
delivery; nothing is ever derived by searching the secret text for what looks like a code. The
`Rendered` also lists every form of every secret (`secrets`), which the dispatcher masks in what a
gateway answers.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

CHANNELS: Final = ("sms", "voice", "email")
PURPOSES: Final = (
    "login",
    "step_up",
    "contact_verification",
    "federated_link",
    "federated_unlink",
)
# What stands for a secret in a summary.
MASK: Final = "••••"
# Email fields that are secrets whichever template names them.
SECRET_FIELDS: Final = frozenset({"activation_token", "code"})


class Secret:
    """A secret as a template writes it. Each form a template may write is a property, so that the
    placeholder (`Secret(None)`) writes every one of them as MASK and `forms()` lists them all.
    Formatting the object itself raises: a template cannot write a secret by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    @property
    def plain(self) -> str:
        return MASK if self._value is None else self._value

    @property
    def spoken(self) -> str:
        """One character at a time, as a voice reads it: "1, 2, 3, 4, 5, 6"."""
        return MASK if self._value is None else ", ".join(self._value)

    def forms(self) -> tuple[str, ...]:
        """Every way this secret may appear in a rendered message (or a gateway's echo of it)."""
        if self._value is None:
            return ()
        value = self._value
        return tuple(dict.fromkeys((value, self.spoken, " ".join(value), html.escape(value))))

    def __format__(self, spec: str) -> str:
        raise TypeError("write a Secret through one of its forms (.plain, .spoken)")

    def __str__(self) -> str:
        raise TypeError("write a Secret through one of its forms (.plain, .spoken)")

    def __repr__(self) -> str:
        return "Secret(...)"


@dataclass(frozen=True)
class Rendered:
    """A message ready to queue: what is sent, and what may be kept (`summary`, rendered from the
    template with placeholders). `secrets`: every form of every secret in the message."""

    text: str
    summary: str
    secrets: tuple[str, ...] = ()
    subject: str | None = None
    html: str | None = None


def _render(
    body: Callable[..., str | EmailText], secrets: Mapping[str, str], **public: str | int
) -> Rendered:
    """`body` rendered twice: with the secrets, and with placeholders (the summary)."""
    real = body(**public, **{name: Secret(value) for name, value in secrets.items()})
    blank = body(**public, **{name: Secret(None) for name in secrets})
    forms = tuple(form for value in secrets.values() for form in Secret(value).forms())
    if isinstance(real, EmailText):
        assert isinstance(blank, EmailText)
        summary = f"{blank.subject}\n\n{blank.text}"
        text, subject, markup = real.text, real.subject, real.html
    else:
        assert isinstance(blank, str)
        summary, text, subject, markup = blank, real, None, None
    # A public field that happens to hold a secret (a display name equal to a code...): by value.
    for form in sorted(forms, key=len, reverse=True):
        summary = summary.replace(form, MASK)
    return Rendered(text=text, summary=summary, secrets=forms, subject=subject, html=markup)


# What the code is for, as each channel says it.
_SMS_WHAT = {
    "login": "votre code de connexion",
    "step_up": "votre code de confirmation",
    "contact_verification": "votre code de vérification de ce numéro",
    # A link lets that identity sign in without the password: the holder must know what the
    # code grants (one segment leaves no room for more; the voice and email texts say it all).
    "federated_link": "votre code pour lier Net-entreprises au compte",
    "federated_unlink": "votre code pour retirer Net-entreprises",
}
_VOICE_WHAT = {
    "login": "votre code de connexion à {service}",
    "step_up": "votre code pour confirmer une opération sensible sur {service}",
    "contact_verification": "votre code de vérification de ce numéro pour {service}",
    "federated_link": (
        "votre code pour lier une identité Net-entreprises à votre compte {service}, "
        "qui permettra de vous connecter sans votre mot de passe"
    ),
    "federated_unlink": "votre code pour retirer une identité Net-entreprises de {service}",
}
_EMAIL_WHAT = {
    "login": ("Code de connexion", "Voici votre code de connexion à {service}"),
    "step_up": (
        "Confirmation d'une opération sensible",
        "Voici votre code pour confirmer une opération sensible sur {service}",
    ),
    "contact_verification": (
        "Vérification de votre adresse électronique",
        "Voici le code qui confirme cette adresse électronique pour {service}",
    ),
    "federated_link": (
        "Lier une identité Net-entreprises",
        "Voici votre code pour lier une identité Net-entreprises à votre compte {service} ; "
        "une fois liée, elle permettra de vous connecter sans votre mot de passe",
    ),
    "federated_unlink": (
        "Retirer une identité Net-entreprises",
        "Voici votre code pour retirer une identité Net-entreprises de votre compte {service}",
    ),
}

_NEVER_SHARE = "Ne le communiquez jamais à personne."
_NOT_YOU = (
    "Si vous n'êtes pas à l'origine de cette opération, prévenez sans attendre "
    "l'administrateur des comptes de votre organisation."
)


def _minutes(minutes: int) -> str:
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"


def _check(purpose: str, code: str, minutes: int) -> None:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; one of {PURPOSES}")
    if not code:
        raise ValueError("empty code")
    if minutes < 1:
        raise ValueError("a code lives at least one minute")


def _code_sms(*, service: str, code: Secret, minutes: int, domain: str, purpose: str) -> str:
    return (
        f"{service} : {_SMS_WHAT[purpose]} est {code.plain}. "
        f"Il expire dans {_minutes(minutes)}. {_NEVER_SHARE}\n\n"
        f"@{domain} #{code.plain}"
    )


def _code_voice(*, service: str, code: Secret, minutes: int, purpose: str) -> str:
    what = _VOICE_WHAT[purpose].format(service=service)
    return (
        f"Bonjour. Voici {what}. "
        f"Votre code est : {code.spoken}. Je répète : {code.spoken}. "
        f"Ce code expire dans {_minutes(minutes)}. {_NEVER_SHARE} Au revoir."
    )


def _code_email(*, purpose: str, service: str, code: Secret, minutes: int) -> EmailText:
    title, intro = _EMAIL_WHAT[purpose]
    return _mail(
        f"{service} : {title.lower()}",
        "Bonjour,",
        f"{intro.format(service=service)} : {code.plain}",
        f"Ce code expire dans {_minutes(minutes)}. {_NEVER_SHARE} {service} ne vous le "
        "demandera jamais, ni par téléphone ni par courriel.",
        "Si vous n'avez rien demandé, ignorez ce message : sans ce code, personne ne peut "
        "utiliser votre compte.",
        signature=service,
    )


def code_message(
    channel: str, *, purpose: str, code: str, minutes: int, service: str, domain: str
) -> Rendered:
    """The message that carries a code on `channel` ("sms", "voice", or "email", with its
    subject and HTML alternative), and its summary."""
    _check(purpose, code, minutes)
    secret = {"code": code}
    common: dict[str, str | int] = {"purpose": purpose, "service": service, "minutes": minutes}
    if channel == "sms":
        return _render(_code_sms, secret, domain=domain, **common)
    if channel == "voice":
        return _render(_code_voice, secret, **common)
    if channel == "email":
        return _render(_code_email, secret, **common)
    raise ValueError(f"unknown channel {channel!r}; one of {CHANNELS}")


def code_text(
    channel: str, *, purpose: str, code: str, minutes: int, service: str, domain: str
) -> str:
    """The text that carries a code on `channel` ("sms", "voice", or "email": the plain body)."""
    return code_message(
        channel, purpose=purpose, code=code, minutes=minutes, service=service, domain=domain
    ).text


def code_sms(*, service: str, code: str, minutes: int, domain: str, purpose: str = "login") -> str:
    return code_text(
        "sms", purpose=purpose, code=code, minutes=minutes, service=service, domain=domain
    )


def code_voice(*, service: str, code: str, minutes: int, purpose: str = "login") -> str:
    return code_text(
        "voice", purpose=purpose, code=code, minutes=minutes, service=service, domain=""
    )


def code_email(*, purpose: str, code: str, minutes: int, service: str) -> Rendered:
    """A code by email, with its subject (the body is `code_text("email", ...)`)."""
    return code_message(
        "email", purpose=purpose, code=code, minutes=minutes, service=service, domain=""
    )


# ---- emails -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmailText:
    subject: str
    text: str
    html: str | None = None


def _mail(subject: str, *paragraphs: str, signature: str) -> EmailText:
    body = [*paragraphs, f"-- \n{signature}"]
    rendered = "".join(
        f"<p>{html.escape(paragraph).replace(chr(10), '<br>')}</p>\n" for paragraph in body
    )
    return EmailText(
        subject=" ".join(subject.split()),  # never a line break in a header
        text="\n\n".join(body) + "\n",
        html=(
            '<!DOCTYPE html>\n<html lang="fr"><head><meta charset="utf-8">'
            f"<title>{html.escape(subject)}</title></head>\n<body>\n{rendered}</body></html>\n"
        ),
    )


def _activation(*, display_name: str, activation_token: Secret, service: str) -> EmailText:
    return _mail(
        f"{service} : activez votre compte",
        f"Bonjour {display_name},",
        f"Un compte {service} vient d'être créé pour vous par l'administrateur des comptes de "
        "votre organisation.",
        f"Votre code d'activation : {activation_token.plain}",
        "Il sert une seule fois. Ne le communiquez à personne. Lors de l'activation, vous "
        "choisirez votre mot de passe ; un code vous sera ensuite envoyé par SMS ou par appel "
        "vocal à chaque première connexion depuis un nouvel appareil.",
        "Si vous ne vous attendiez pas à ce message, ignorez-le.",
        signature=service,
    )


def _contact_changed(*, display_name: str, what: str, service: str) -> EmailText:
    return _mail(
        f"{service} : vos coordonnées ont été modifiées",
        f"Bonjour {display_name},",
        f"Modification de vos coordonnées sur {service} : {what}.",
        _NOT_YOU,
        signature=service,
    )


def _password_changed(*, display_name: str, service: str) -> EmailText:
    return _mail(
        f"{service} : votre mot de passe a été modifié",
        f"Bonjour {display_name},",
        f"Le mot de passe de votre compte {service} vient d'être modifié. Vos appareils de "
        "confiance devront de nouveau saisir un code à la prochaine connexion.",
        _NOT_YOU,
        signature=service,
    )


# The warnings of a new factor quote nothing of it: its name is chosen by whoever added it,
# who may be the one the warning is about (a name closing the quote could make the mail say
# anything: attack review of issue 16). The kind and the time say which.
def _added(what: str, display_name: str, when: str, service: str) -> EmailText:
    return _mail(
        f"{service} : {what} a été ajoutée",
        f"Bonjour {display_name},",
        f"{what[0].upper()}{what[1:]} a été ajoutée à votre compte {service} le {when}. Elle "
        "peut désormais remplacer le code reçu par SMS ou par appel lors de vos connexions et "
        "de vos actions sensibles.",
        _NOT_YOU,
        signature=service,
    )


def _factor_added(*, display_name: str, when: str, service: str) -> EmailText:
    return _added("une application d'authentification", display_name, when, service)


def _passkey_added(*, display_name: str, when: str, service: str) -> EmailText:
    return _added("une clé d'accès (passkey)", display_name, when, service)


def _passkey_removed(*, display_name: str, factor_name: str, by: str, service: str) -> EmailText:
    return _mail(
        f"{service} : une clé d'accès a été retirée",
        f"Bonjour {display_name},",
        f"La clé d'accès (passkey) « {factor_name} » a été retirée de votre compte "
        f"{service} ({by}). Vos sessions ouvertes ont été fermées.",
        _NOT_YOU,
        signature=service,
    )


def _passkey_cloned(*, display_name: str, factor_name: str, service: str) -> EmailText:
    return _mail(
        f"{service} : une copie de votre clé d'accès a été détectée",
        f"Bonjour {display_name},",
        f"La clé d'accès (passkey) « {factor_name} » de votre compte {service} a répondu avec "
        "un compteur qui ne progressait pas : une copie de la clé existe. Elle est désactivée, "
        "vos sessions ouvertes ont été fermées et vos appareils de confiance oubliés. Par "
        "précaution, vos autres clés d'accès sont désactivées et vos applications "
        "d'authentification retirées : celui qui détenait la copie a pu en ajouter.",
        "Retirez ces clés de votre compte, ajoutez de nouveau celles qui sont les vôtres (un "
        "code par SMS ou par appel vous sera demandé) et prévenez l'administrateur des comptes "
        "de votre organisation.",
        signature=service,
    )


def _factor_removed(*, display_name: str, factor_name: str, by: str, service: str) -> EmailText:
    return _mail(
        f"{service} : une application d'authentification a été retirée",
        f"Bonjour {display_name},",
        f"L'application d'authentification « {factor_name} » a été retirée de votre compte "
        f"{service} ({by}). Vos sessions ouvertes ont été fermées.",
        _NOT_YOU,
        signature=service,
    )


def _new_admin(*, display_name: str, admin_name: str, service: str) -> EmailText:
    return _mail(
        f"{service} : nouvel administrateur des comptes",
        f"Bonjour {display_name},",
        f"{admin_name} est désormais administrateur des comptes de votre organisation sur "
        f"{service}.",
        "Si ce changement vous surprend, signalez-le à la direction de votre organisation.",
        signature=service,
    )


def _code_failures(*, display_name: str, service: str) -> EmailText:
    return _mail(
        f"{service} : codes erronés sur votre compte",
        f"Bonjour {display_name},",
        f"Votre mot de passe {service} a été saisi correctement, mais plusieurs codes de "
        "vérification erronés ont suivi. La saisie des codes est suspendue pour un moment.",
        "Si ce n'était pas vous, votre mot de passe est probablement connu d'un tiers : "
        "changez-le dès que possible et prévenez l'administrateur des comptes de votre "
        "organisation.",
        signature=service,
    )


def _wrong_codes(*, display_name: str, service: str) -> EmailText:
    return _mail(
        f"{service} : code erroné après votre mot de passe",
        f"Bonjour {display_name},",
        f"Une connexion à votre compte {service} a passé la première étape (votre mot de passe "
        "ou votre identité fédérée), puis un code de vérification erroné a été saisi.",
        "Si ce n'était pas vous, votre mot de passe est probablement connu d'un tiers : "
        "changez-le dès que possible et prévenez l'administrateur des comptes de votre "
        "organisation. Ce message est envoyé au plus une fois par jour.",
        signature=service,
    )


def _email_verification(
    *, display_name: str, code: Secret, minutes: str, service: str
) -> EmailText:
    return _mail(
        f"{service} : confirmez votre nouvelle adresse électronique",
        f"Bonjour {display_name},",
        f"Pour confirmer cette adresse électronique sur {service}, saisissez le code : "
        f"{code.plain}",
        f"Ce code expire dans {_minutes(int(minutes))}. {_NEVER_SHARE}",
        "Si vous n'avez rien demandé, ignorez ce message : votre adresse ne sera pas modifiée.",
        signature=service,
    )


def _federated_link_proposed(*, display_name: str, admin_name: str, service: str) -> EmailText:
    # No code and no link: the holder alone attaches an identity that signs in as them.
    return _mail(
        f"{service} : proposition de lier une identité Net-entreprises",
        f"Bonjour {display_name},",
        f"{admin_name}, administrateur des comptes de votre organisation, propose de lier une "
        f"identité Net-entreprises à votre compte {service}. Une identité liée permet de se "
        "connecter à votre compte sans votre mot de passe.",
        "Rien n'est lié tant que vous ne le faites pas vous-même : pour accepter, connectez-vous "
        f"à {service} puis liez votre identité Net-entreprises depuis votre propre session.",
        "Si cette proposition vous surprend, ignorez-la et signalez-la à la direction de votre "
        "organisation.",
        signature=service,
    )


# What a readiness campaign says is missing, by readiness issue (accounts/directory.py).
_MISSING = {
    "no_phone": "aucun numéro de téléphone n'est enregistré pour votre compte",
    "invalid_phone": "le numéro enregistré pour votre compte ne peut pas recevoir de code",
    "phone_unverified": (
        "votre numéro de téléphone n'a pas encore été vérifié : aucun code n'y a encore été "
        "reçu et saisi"
    ),
    "pending_activation": (
        "votre compte n'est pas encore activé : utilisez le code d'activation reçu par "
        "courriel, ou demandez-en un nouveau à l'administrateur des comptes de votre organisation"
    ),
}


def _missing_lines(issues: str) -> str:
    return "\n".join(f"- {_MISSING[issue]}" for issue in issues.split(","))


def _readiness_reminder(
    *,
    display_name: str,
    organization_name: str,
    issues: str,
    link_url: str,
    link_token: Secret,
    service: str,
) -> EmailText:
    link = link_url.replace("{token}", link_token.plain)
    return _mail(
        f"{service} : préparez dès maintenant la connexion en deux étapes",
        f"Bonjour {display_name},",
        f"La connexion à {service} se fera bientôt en deux étapes : après votre mot de passe, un "
        "code envoyé par SMS (ou par appel vocal sur une ligne fixe) sera demandé. Pour votre "
        f"compte ({organization_name}), il manque :\n{_missing_lines(issues)}",
        f"Pour enregistrer ou vérifier votre numéro, ouvrez ce lien personnel, à usage unique : "
        f"{link}\nUn code sera envoyé au numéro que vous indiquerez ; le lien seul ne modifie "
        "rien à votre compte. Ne le transmettez à personne.",
        "Un rappel vous sera envoyé tant que votre compte ne sera pas prêt.",
        signature=service,
    )


def _readiness_activation(
    *, display_name: str, organization_name: str, issues: str, service: str
) -> EmailText:
    return _mail(
        f"{service} : préparez dès maintenant la connexion en deux étapes",
        f"Bonjour {display_name},",
        f"La connexion à {service} se fera bientôt en deux étapes. Pour votre compte "
        f"({organization_name}), il manque :\n{_missing_lines(issues)}",
        "Un rappel vous sera envoyé tant que votre compte ne sera pas prêt.",
        signature=service,
    )


_EMAILS: dict[str, tuple[Callable[..., EmailText], set[str]]] = {
    "activation": (_activation, {"display_name", "activation_token", "service"}),
    "contact_changed": (_contact_changed, {"display_name", "what", "service"}),
    "password_changed": (_password_changed, {"display_name", "service"}),
    "new_admin": (_new_admin, {"display_name", "admin_name", "service"}),
    "factor_added": (_factor_added, {"display_name", "when", "service"}),
    "passkey_added": (_passkey_added, {"display_name", "when", "service"}),
    "factor_removed": (_factor_removed, {"display_name", "factor_name", "by", "service"}),
    "passkey_removed": (_passkey_removed, {"display_name", "factor_name", "by", "service"}),
    "passkey_cloned": (_passkey_cloned, {"display_name", "factor_name", "service"}),
    "code_failures": (_code_failures, {"display_name", "service"}),
    "wrong_codes": (_wrong_codes, {"display_name", "service"}),
    "federated_link_proposed": (
        _federated_link_proposed,
        {"display_name", "admin_name", "service"},
    ),
    "email_verification": (_email_verification, {"display_name", "code", "minutes", "service"}),
}
EMAIL_KINDS: Final = tuple(_EMAILS)


def email(kind: str, **fields: str) -> Rendered:
    """An email of `kind`; every field it names is required, and no other is accepted. Fields of
    SECRET_FIELDS reach the template as a `Secret` and are placeholders in the summary."""
    if kind not in _EMAILS:
        raise ValueError(f"unknown email kind {kind!r}; one of {EMAIL_KINDS}")
    render, names = _EMAILS[kind]
    if set(fields) != names:
        missing, extra = sorted(names - set(fields)), sorted(set(fields) - names)
        raise ValueError(f"email {kind!r}: missing fields {missing}, unexpected fields {extra}")
    secrets = {name: value for name, value in fields.items() if name in SECRET_FIELDS}
    public = {name: value for name, value in fields.items() if name not in SECRET_FIELDS}
    return _render(render, secrets, **public)


def readiness_email(
    *,
    display_name: str,
    organization_name: str,
    issues: list[str],
    service: str,
    link_url: str,
    link_token: str | None,
) -> Rendered:
    """A readiness campaign's email: what the account lacks and, when its phone is the issue, the
    single-use link that opens a contact verification (`link_token`, a secret)."""
    if not issues or any(issue not in _MISSING for issue in issues):
        raise ValueError(f"readiness issues must be some of {sorted(_MISSING)}")
    public = {
        "display_name": display_name,
        "organization_name": organization_name,
        "issues": ",".join(issues),
        "service": service,
    }
    if link_token is None:
        return _render(_readiness_activation, {}, **public)
    if "{token}" not in link_url:
        raise ValueError("the link URL has no {token}")
    return _render(_readiness_reminder, {"link_token": link_token}, link_url=link_url, **public)
