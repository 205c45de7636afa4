"""The delivery queue alone: attempts, back-off schedule, dropping what is no longer wanted or too much."""
from __future__ import annotations

import threading
import time

from fhir_server.search.query import Query
from fhir_server.subscriptions import Definition, Deliveries, Notification


def notification(endpoint="http://127.0.0.1:9/hook", payload=None, body=b'{"resourceType":"Observation"}'):
    sub = Definition("s1", 1, "active", "Observation", "Observation?status=final", Query(types=("Observation",)),
                     endpoint, (("Authorization", "Bearer x"),), payload, None)
    return Notification(sub, "Observation", "o/1", 3, body)


def test_requests_follow_r4_rest_hook():
    empty = notification().request()
    assert (empty.get_method(), empty.full_url, empty.data) == ("POST", "http://127.0.0.1:9/hook", b"")
    assert empty.get_header("Authorization") == "Bearer x"
    put = notification(endpoint="http://h/base/", payload="application/fhir+json").request()
    assert (put.get_method(), put.full_url) == ("PUT", "http://h/base/Observation/o%2F1")
    assert put.get_header("Content-type") == "application/fhir+json; charset=utf-8"
    gone = notification(endpoint="http://h/base", payload="application/fhir+json", body=None).request()
    assert (gone.get_method(), gone.full_url, gone.data) == ("DELETE", "http://h/base/Observation/o%2F1", None)


def test_each_failure_waits_the_next_delay_then_the_last_one_is_reported():
    attempts, outcomes, done = [], [], threading.Event()

    def sender(request, timeout):
        attempts.append(time.monotonic())
        raise OSError("down")

    delays = (0.01, 0.02, 0.04)
    deliveries = Deliveries(lambda o: (outcomes.append(o), done.set()), lambda n: True, retry_delays=delays,
                            sender=sender, workers=1)
    deliveries.submit(notification())
    assert done.wait(5)
    deliveries.stop()
    assert len(attempts) == 4
    assert all(later - earlier >= delay * 0.9 for earlier, later, delay in zip(attempts, attempts[1:], delays))
    assert [(o.delivered, o.attempts, o.error) for o in outcomes] == [(False, 4, "down")]


def test_a_notification_no_longer_wanted_is_not_sent_and_too_many_waiting_are_dropped():
    sent = []
    deliveries = Deliveries(lambda o: None, lambda n: False, sender=lambda r, t: sent.append(r), max_pending=1)
    deliveries.submit(notification())
    assert deliveries.wait_idle(5)
    assert sent == []
    deliveries.stop()

    blocked = Deliveries(lambda o: None, lambda n: True, sender=lambda r, t: None, max_pending=1,
                         workers=0)  # nobody sends: the first waits, the second is dropped
    blocked.submit(notification())
    blocked.submit(notification())
    assert (blocked.pending(), blocked.dropped) == (1, 1)
    blocked.stop()
