"""The second login factor (a 6-digit code by e-mail or SMS) and the password lockout.

* A code lives ``--otp-ttl`` seconds (default 300), survives a wrong try and dies after
  :data:`MAX_CODE_ATTEMPTS` wrong tries; only its hash is stored.
* An account locks after :data:`MAX_PASSWORD_FAILURES` consecutive wrong passwords, for
  :data:`BASE_LOCK_SECONDS`, doubling with every further failure (capped at a day). Counters are
  kept per username whether or not the account exists, so a lock says nothing about existence.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Callable

from auth.models import Account
from auth.senders import OTPMessage, Sender, SendError
from auth.storage import AuthStore

MAX_CODE_ATTEMPTS = 5
MAX_PASSWORD_FAILURES = 5
BASE_LOCK_SECONDS = 60
MAX_LOCK_SECONDS = 86400


class NoContact(Exception):
    """The account has neither an e-mail address nor a phone number."""


@dataclass(frozen=True)
class CodeCheck:
    ok: bool
    username: str | None = None
    reason: str = ""          # "wrong", "expired" (unknown, timed out or out of attempts)
    attempts_left: int = 0


def _digest(challenge: str, code: str) -> str:
    return hashlib.sha256(f"{challenge}:{code}".encode()).hexdigest()


class OneTimeCodes:
    def __init__(self, store: AuthStore, sender: Sender, clock: Callable[[], float], ttl: int):
        self.store, self.sender, self.clock, self.ttl = store, sender, clock, ttl

    def start(self, account: Account) -> str:
        """Send a fresh code to the account's contact; returns the challenge id (kept in the session)."""
        contact = account.contact
        if contact is None:
            raise NoContact(account.username)
        channel, address = contact
        challenge = secrets.token_urlsafe(24)
        code = f"{secrets.randbelow(10 ** 6):06d}"
        now = self.clock()
        self.store.put("otp", challenge, {"username": account.username, "digest": _digest(challenge, code),
                                          "attempts": 0, "channel": channel, "created": now}, now + self.ttl)
        minutes = max(1, self.ttl // 60)
        text = (f"Your sign-in code is {code}. It expires in {minutes} minute{'s' if minutes > 1 else ''}. "
                "Never share it: nobody from the health record service will ask you for it.")
        try:
            self.sender.send(OTPMessage(to=address, channel=channel, code=code, text=text))
        except SendError:
            self.store.delete("otp", challenge)
            raise
        return challenge

    def check(self, challenge: str, code: str) -> CodeCheck:
        code = (code or "").strip().replace(" ", "")
        outcome: dict = {}

        def attempt(record: dict | None) -> dict | None:
            if record is None:
                outcome["result"] = CodeCheck(False, reason="expired")
                return None
            if hmac.compare_digest(record["digest"], _digest(challenge, code)):
                outcome["result"] = CodeCheck(True, record["username"])
                return None  # used: gone
            record["attempts"] += 1
            left = MAX_CODE_ATTEMPTS - record["attempts"]
            outcome["result"] = CodeCheck(False, record["username"], "wrong" if left > 0 else "expired",
                                          max(left, 0))
            return record if left > 0 else None

        self.store.update("otp", challenge, attempt, self.clock())
        return outcome["result"]

    def discard(self, challenge: str) -> None:
        self.store.delete("otp", challenge)


class Lockout:
    def __init__(self, store: AuthStore, clock: Callable[[], float]):
        self.store, self.clock = store, clock

    @staticmethod
    def _key(username: str) -> str:
        return username.strip().lower()

    def locked_for(self, username: str) -> float:
        """Seconds until the account may try again (0: not locked)."""
        record = self.store.get("lockouts", self._key(username), self.clock())
        if not record:
            return 0.0
        return max(0.0, record.get("locked_until", 0) - self.clock())

    def failure(self, username: str) -> float:
        """Count a wrong password; returns the lock duration it starts (0 if none)."""
        now = self.clock()

        def count(record: dict | None) -> dict:
            record = record or {"failures": 0, "locked_until": 0}
            record["failures"] += 1
            extra = record["failures"] - MAX_PASSWORD_FAILURES
            if extra >= 0:
                record["locked_until"] = now + min(MAX_LOCK_SECONDS, BASE_LOCK_SECONDS * 2 ** min(extra, 20))
            return record

        record = self.store.update("lockouts", self._key(username), count, now,
                                   expires=lambda r: max(now, r["locked_until"]) + MAX_LOCK_SECONDS)
        return max(0.0, record["locked_until"] - now)

    def success(self, username: str) -> None:
        self.store.delete("lockouts", self._key(username))
