"""Password hashing with scrypt (memory-hard, stdlib): ``scrypt$n$r$p$salt$hash`` strings."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

N, R, P, DKLEN = 2 ** 14, 8, 1, 32  # 16 MiB of memory per hash
MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int | None = None, r: int = R, p: int = P) -> str:
    """A new salted hash; the cost is :data:`N` unless given (tests lower it to go fast)."""
    n = n or N
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=DKLEN, maxmem=MAXMEM)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str | None) -> bool:
    """True if ``password`` matches; ``encoded=None`` still spends the hashing time (no user oracle)."""
    if not encoded:
        hashlib.scrypt(password.encode(), salt=b"\0" * 16, n=N, r=R, p=P, dklen=DKLEN, maxmem=MAXMEM)
        return False
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                  dklen=len(_unb64(digest)), maxmem=MAXMEM)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, _unb64(digest))
