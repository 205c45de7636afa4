"""Password hashing: scrypt, salted, self-describing, constant-time comparison."""
from __future__ import annotations

from auth.passwords import hash_password, verify_password


def test_hash_and_verify():
    encoded = hash_password("a long password", n=2 ** 14)
    assert encoded.startswith("scrypt$16384$8$1$")
    assert verify_password("a long password", encoded)
    assert not verify_password("a long passwore", encoded)
    assert hash_password("a long password") != hash_password("a long password")  # salted
    assert not verify_password("x", None) and not verify_password("x", "md5$abc") and not verify_password("x", "junk")
