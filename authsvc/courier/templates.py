"""Message texts, in French, in one place.

The SMS names the service, gives the code and its lifetime, warns never to share it, and ends
with the WebOTP line (`@domain #code`) so that browsers can offer to fill the code in. The voice
text reads the digits one by one, twice.
"""

from __future__ import annotations


def code_sms(*, service: str, code: str, minutes: int, domain: str) -> str:
    return (
        f"{service} : votre code de connexion est {code}. "
        f"Il expire dans {minutes} minutes. Ne le communiquez jamais à personne.\n\n"
        f"@{domain} #{code}"
    )


def code_voice(*, service: str, code: str, minutes: int) -> str:
    digits = ", ".join(code)
    return (
        f"Bonjour. Voici votre code de connexion à {service}. "
        f"Votre code est : {digits}. Je répète : {digits}. "
        f"Ce code expire dans {minutes} minutes. Ne le communiquez jamais à personne. Au revoir."
    )
