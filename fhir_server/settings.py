"""Server settings, from arguments or the environment (``FHIR_SERVER_*``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

DEFAULT_STORE = "sqlite:///var/fhir.sqlite3"
PROFILE_MODES = ("enforce", "warn")


def system_clock() -> datetime:
    """The current instant (aware, UTC): the default ``Settings.clock``."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Settings:
    store_url: str = DEFAULT_STORE
    base_url: str | None = None  # public base, e.g. https://dmp.example.org/fhir; derived from requests if None
    insecure_no_auth: bool = False
    max_body_bytes: int = 16 * 1024 * 1024
    # traceability (fhir_server.audit, docs/adr/0008): every access becomes an AuditEvent, written in the
    # background in batches; off only to measure its cost (FHIR_SERVER_AUDIT=0)
    audit: bool = True
    audit_queue: int = 1_000  # traces waiting to be written; a full queue makes requests wait, never drops
    audit_batch: int = 500  # traces written per store transaction at most (a commit waited for is short)
    # what a write that misses a required or claimed profile does: "enforce" refuses it (422), "warn" stores
    # it and returns the problems as warnings (fhir_server.validation.enforcement)
    profile_mode: str = "warn"
    # SMART authorization server (auth/)
    otp_ttl: int = 300  # seconds a one-time login code stays valid
    access_token_ttl: int = 3600  # seconds an access token stays valid
    otp_outbox: str | None = None  # development: write one-time codes as JSON files into this directory
    smtp_url: str | None = None  # smtp[s]://user:password@host:port?from=address[&starttls=1]
    sms_gateway_url: str | None = None  # HTTP SMS gateway receiving POST {"to", "text"}
    # the care history (fhir_server.carehistory): the clock its 24-month window is computed on (tests pass a fake
    # one), and the seconds between two purges of expired care items in each `serve` process (0: no periodic purge)
    clock: Callable[[], datetime] = field(default=system_clock, compare=False, repr=False)
    purge_interval: float = 6 * 3600
    # URL prefixes rest-hook notifications may go to (subscriptions/endpoints.py); empty: any http(s) endpoint
    subscription_endpoints: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.profile_mode not in PROFILE_MODES:
            raise ValueError(f"profile_mode must be one of {', '.join(PROFILE_MODES)}, not {self.profile_mode!r}")

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = os.environ
        values = {
            "store_url": env.get("FHIR_SERVER_STORE", DEFAULT_STORE),
            "base_url": env.get("FHIR_SERVER_BASE_URL") or None,
            "insecure_no_auth": env.get("FHIR_SERVER_INSECURE_NO_AUTH") == "1",
            "max_body_bytes": int(env.get("FHIR_SERVER_MAX_BODY_BYTES", cls.max_body_bytes)),
            "audit": env.get("FHIR_SERVER_AUDIT", "1").lower() not in ("0", "false", "off", "no"),
            "audit_queue": int(env.get("FHIR_SERVER_AUDIT_QUEUE", cls.audit_queue)),
            "profile_mode": env.get("FHIR_SERVER_PROFILE_MODE", cls.profile_mode),
            "otp_ttl": int(env.get("FHIR_SERVER_OTP_TTL", cls.otp_ttl)),
            "access_token_ttl": int(env.get("FHIR_SERVER_ACCESS_TOKEN_TTL", cls.access_token_ttl)),
            "otp_outbox": env.get("FHIR_SERVER_OTP_OUTBOX") or None,
            "smtp_url": env.get("FHIR_SERVER_SMTP_URL") or None,
            "sms_gateway_url": env.get("FHIR_SERVER_SMS_GATEWAY_URL") or None,
            "purge_interval": float(env.get("FHIR_SERVER_PURGE_INTERVAL", cls.purge_interval)),
            "subscription_endpoints": tuple(u.strip() for u in env.get("FHIR_SERVER_SUBSCRIPTION_ENDPOINTS", "")
                                            .split(",") if u.strip()),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
