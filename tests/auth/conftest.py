"""Fixtures for the authorization server tests (helpers in smart_flow.py)."""
from __future__ import annotations

import pytest

from backends import BACKENDS, make_store
from smart_flow import Env, FakeClock


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch):
    """scrypt at a lower cost (N=2**10) so the many sign-ins stay fast; the scheme is unchanged."""
    import auth.passwords
    monkeypatch.setattr(auth.passwords, "N", 2 ** 10)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def env(request, tmp_path, clock):
    store = make_store(request.param, tmp_path)
    yield Env(store, tmp_path / "outbox", clock)
    store.close()


@pytest.fixture
def sqlite_env(tmp_path, clock):
    store = make_store("sqlite", tmp_path)
    yield Env(store, tmp_path / "outbox", clock)
    store.close()
