"""Server settings, from arguments or the environment (``FHIR_SERVER_*``)."""
from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_STORE = "sqlite:///var/fhir.sqlite3"
PROFILE_MODES = ("enforce", "warn")


@dataclass(frozen=True)
class Settings:
    store_url: str = DEFAULT_STORE
    base_url: str | None = None  # public base, e.g. https://dmp.example.org/fhir; derived from requests if None
    insecure_no_auth: bool = False
    max_body_bytes: int = 16 * 1024 * 1024
    # what a write that misses a required or claimed profile does: "enforce" refuses it (422), "warn" stores
    # it and returns the problems as warnings (fhir_server.validation.enforcement)
    profile_mode: str = "warn"
    # SMART authorization server (auth/)
    otp_ttl: int = 300  # seconds a one-time login code stays valid
    access_token_ttl: int = 3600  # seconds an access token stays valid
    otp_outbox: str | None = None  # development: write one-time codes as JSON files into this directory
    smtp_url: str | None = None  # smtp[s]://user:password@host:port?from=address[&starttls=1]
    sms_gateway_url: str | None = None  # HTTP SMS gateway receiving POST {"to", "text"}

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
            "profile_mode": env.get("FHIR_SERVER_PROFILE_MODE", cls.profile_mode),
            "otp_ttl": int(env.get("FHIR_SERVER_OTP_TTL", cls.otp_ttl)),
            "access_token_ttl": int(env.get("FHIR_SERVER_ACCESS_TOKEN_TTL", cls.access_token_ttl)),
            "otp_outbox": env.get("FHIR_SERVER_OTP_OUTBOX") or None,
            "smtp_url": env.get("FHIR_SERVER_SMTP_URL") or None,
            "sms_gateway_url": env.get("FHIR_SERVER_SMS_GATEWAY_URL") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
