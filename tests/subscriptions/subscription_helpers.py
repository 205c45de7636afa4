"""Helpers shared by the subscription tests."""
from __future__ import annotations

RETRY_DELAYS = (0.01, 0.02, 0.04)  # 4 attempts, a few tens of milliseconds in all


def quick(server) -> None:
    """Short retry delays and timeouts for the tests (the delays are injectable)."""
    deliveries = server.subscriptions.deliveries
    deliveries.retry_delays = RETRY_DELAYS
    deliveries.timeout = 2.0
