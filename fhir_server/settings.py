"""Server settings, from arguments or the environment (``FHIR_SERVER_*``)."""
from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_STORE = "sqlite:///var/fhir.sqlite3"


@dataclass(frozen=True)
class Settings:
    store_url: str = DEFAULT_STORE
    base_url: str | None = None  # public base, e.g. https://dmp.example.org/fhir; derived from requests if None
    insecure_no_auth: bool = False
    max_body_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = os.environ
        values = {
            "store_url": env.get("FHIR_SERVER_STORE", DEFAULT_STORE),
            "base_url": env.get("FHIR_SERVER_BASE_URL") or None,
            "insecure_no_auth": env.get("FHIR_SERVER_INSECURE_NO_AUTH") == "1",
            "max_body_bytes": int(env.get("FHIR_SERVER_MAX_BODY_BYTES", cls.max_body_bytes)),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
