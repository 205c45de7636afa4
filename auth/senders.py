"""How one-time codes reach people: e-mail (SMTP), SMS (an HTTP gateway), or a development outbox.

Every sender takes an :class:`OTPMessage`; :func:`build_sender` picks them from the settings:

* ``--otp-outbox DIR`` (``FHIR_SERVER_OTP_OUTBOX``): each message becomes a JSON file
  ``{"to", "channel", "code", "text"}`` in DIR (development and tests; it takes precedence);
* ``FHIR_SERVER_SMTP_URL`` = ``smtp[s]://user:password@host:port?from=addr[&starttls=1]`` for e-mail;
* ``FHIR_SERVER_SMS_GATEWAY_URL`` (+ ``FHIR_SERVER_SMS_GATEWAY_TOKEN``, sent as a Bearer token):
  the gateway receives ``POST {"to": "+33...", "text": "..."}`` as JSON.
"""
from __future__ import annotations

import json
import logging
import os
import smtplib
import ssl
import time
import urllib.request
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

log = logging.getLogger("auth.senders")


@dataclass(frozen=True)
class OTPMessage:
    to: str        # exactly the registered e-mail address or phone number
    channel: str   # "email" or "sms"
    code: str      # the 6 digits
    text: str      # the human message (contains the code)


class SendError(Exception):
    """The message could not be handed over."""


class Sender:
    channels: tuple[str, ...] = ()

    def send(self, message: OTPMessage) -> None:
        raise NotImplementedError


class OutboxSender(Sender):
    """Writes each message as ``<time>-<uuid>.json`` into a directory (atomically: no partial files)."""

    channels = ("email", "sms")

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def send(self, message: OTPMessage) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.json"
        body = json.dumps({"to": message.to, "channel": message.channel, "code": message.code,
                           "text": message.text}, ensure_ascii=False)
        tmp = self.directory / f".{name}.tmp"
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, self.directory / name)


class SMTPSender(Sender):
    channels = ("email",)

    def __init__(self, url: str, timeout: float = 10.0):
        parsed = urlparse(url)
        if parsed.scheme not in ("smtp", "smtps"):
            raise ValueError(f"not an SMTP URL: {url!r} (smtp://user:password@host:port?from=address)")
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        self.host = parsed.hostname or "localhost"
        self.port = parsed.port or (465 if parsed.scheme == "smtps" else 25)
        self.ssl = parsed.scheme == "smtps"
        self.starttls = options.get("starttls") in ("1", "true", "yes")
        self.user = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self.sender = options.get("from") or f"no-reply@{self.host}"
        self.timeout = timeout

    def send(self, message: OTPMessage) -> None:
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = self.sender, message.to, "Your sign-in code"
        mail.set_content(message.text)
        try:
            if self.ssl:
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                        context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.user:
                    smtp.login(self.user, self.password or "")
                smtp.send_message(mail)
        except (OSError, smtplib.SMTPException) as exc:
            raise SendError(f"SMTP delivery failed: {exc}") from exc


class HTTPSMSSender(Sender):
    """Posts ``{"to", "text"}`` as JSON to an SMS gateway; any 2xx answer is success."""

    channels = ("sms",)

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0):
        self.url, self.token, self.timeout = url, token, timeout

    def send(self, message: OTPMessage) -> None:
        body = json.dumps({"to": message.to, "text": message.text}).encode()
        request = urllib.request.Request(self.url, data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (configured)
                if not 200 <= response.status < 300:
                    raise SendError(f"SMS gateway answered {response.status}")
        except OSError as exc:
            raise SendError(f"SMS gateway unreachable: {exc}") from exc


class ChannelSender(Sender):
    """Dispatches by channel to the first sender that handles it."""

    def __init__(self, senders: list[Sender]):
        self.senders = senders
        self.channels = tuple(sorted({c for s in senders for c in s.channels}))

    def send(self, message: OTPMessage) -> None:
        for sender in self.senders:
            if message.channel in sender.channels:
                sender.send(message)
                return
        raise SendError(f"no sender is configured for {message.channel} (set --otp-outbox, "
                        "FHIR_SERVER_SMTP_URL or FHIR_SERVER_SMS_GATEWAY_URL)")


def build_sender(settings) -> ChannelSender:
    senders: list[Sender] = []
    outbox = getattr(settings, "otp_outbox", None)
    if outbox:
        senders.append(OutboxSender(outbox))
    smtp_url = getattr(settings, "smtp_url", None)
    if smtp_url:
        senders.append(SMTPSender(smtp_url))
    sms_url = getattr(settings, "sms_gateway_url", None)
    if sms_url:
        senders.append(HTTPSMSSender(sms_url, os.environ.get("FHIR_SERVER_SMS_GATEWAY_TOKEN")))
    return ChannelSender(senders)
