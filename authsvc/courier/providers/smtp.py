"""`smtp`: email through a relay, with STARTTLS or implicit TLS and authentication.

The standard library's smtplib runs in a worker thread (one connection per message: simple and
robust; the relay does the queueing). Certificates are verified, against `smtp_ca_file` when set.
5xx answers are permanent, except authentication failures (a configuration being fixed); 4xx,
timeouts and connection errors are retried.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from authsvc.config import Settings, SmtpSecurity
from authsvc.courier.providers.base import DeliveryError, Outgoing


class SmtpProvider:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tls = ssl.create_default_context(
            cafile=str(settings.smtp_ca_file) if settings.smtp_ca_file else None
        )
        _, sender = parseaddr(settings.smtp_from)
        self._domain = sender.rpartition("@")[2] or "localhost"

    def compose(self, message: Outgoing) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self._settings.smtp_from
        email["To"] = Address(addr_spec=message.to)
        email["Subject"] = message.subject or self._settings.service_name
        email["Date"] = formatdate(localtime=False)
        email["Message-ID"] = make_msgid(idstring=message.reference, domain=self._domain)
        email["Auto-Submitted"] = "auto-generated"
        email.set_content(message.text)
        if message.html:
            email.add_alternative(message.html, subtype="html")
        return email

    async def deliver(self, message: Outgoing) -> str:
        try:
            email = self.compose(message)
        except (ValueError, IndexError) as error:  # an address the headers refuse
            raise DeliveryError(
                "smtp: address refused", permanent=True, detail=str(error)
            ) from None
        await asyncio.to_thread(self._send, email)
        return str(email["Message-ID"])

    def _send(self, email: EmailMessage) -> None:
        settings = self._settings
        try:
            smtp: smtplib.SMTP
            if settings.smtp_security is SmtpSecurity.TLS:
                smtp = smtplib.SMTP_SSL(
                    settings.smtp_host,
                    settings.smtp_port,
                    timeout=settings.smtp_timeout_s,
                    context=self._tls,
                )
            else:
                smtp = smtplib.SMTP(
                    settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_s
                )
            with smtp:
                smtp.ehlo()
                if settings.smtp_security is SmtpSecurity.STARTTLS:
                    smtp.starttls(context=self._tls)
                    smtp.ehlo()
                if settings.smtp_username:
                    password = settings.smtp_password
                    smtp.login(
                        settings.smtp_username, password.get_secret_value() if password else ""
                    )
                smtp.send_message(email)
        except smtplib.SMTPAuthenticationError as error:
            raise DeliveryError(f"smtp: authentication refused ({error.smtp_code})") from None
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            raise DeliveryError(
                f"smtp: recipient refused ({codes})", permanent=all(c >= 500 for c in codes)
            ) from None
        except smtplib.SMTPResponseException as error:
            raw = error.smtp_error
            detail = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            # The relay's words may quote the message: detail, masked by the dispatcher.
            raise DeliveryError(
                f"smtp: {error.smtp_code}", permanent=error.smtp_code >= 500, detail=detail
            ) from None
        except (smtplib.SMTPException, OSError) as error:  # timeouts, refused, TLS errors
            raise DeliveryError(f"smtp: {type(error).__name__}", detail=str(error)) from None

    async def aclose(self) -> None:
        return None
