"""Rest-hook deliveries on background threads: timeouts, retries with exponential back-off.

A :class:`Notification` is queued after the write it reports committed; worker threads (started on
the first notification) send it. R4 rest-hook (``subscription-channel-type``): "the channel is
executed by making a post to the URI. If a payload is included, the URL is interpreted as the
service base, and an update (PUT) is made". So:

==============================  ==========================================================
no payload                      ``POST {endpoint}``, empty body
payload, created or updated     ``PUT {endpoint}/{type}/{id}``, the version as ``application/fhir+json``
payload, deleted                ``DELETE {endpoint}/{type}/{id}``, empty body
==============================  ==========================================================

each with the channel's headers. A 2xx answer is a success; anything else (other statuses,
redirects, refused connections, timeouts) is retried after each of :data:`RETRY_DELAYS` in turn;
after the last attempt the notification is given up and reported to ``on_outcome``. Retries wait
in a schedule, not in a worker, so one dead endpoint never holds up the others.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import quote

from fhir_server.subscriptions.checks import Definition

log = logging.getLogger(__name__)

RETRY_DELAYS: tuple[float, ...] = (2.0, 8.0, 32.0, 128.0)  # seconds before the 2nd, 3rd... attempt (5 attempts)
TIMEOUT = 10.0  # seconds per attempt (connect and each read)
WORKERS = 2  # delivery threads per process
MAX_PENDING = 10_000  # notifications waiting in one process, at most; more are dropped (logged)


@dataclass(frozen=True)
class Notification:
    subscription: Definition
    rtype: str
    rid: str
    version: int
    body: bytes | None  # the version's JSON; None for a deletion

    def request(self) -> urllib.request.Request:
        sub = self.subscription
        headers = dict(sub.headers)
        if sub.payload is None:
            method, url, data = "POST", sub.endpoint, b""
        else:
            url = f"{sub.endpoint.rstrip('/')}/{self.rtype}/{quote(self.rid, safe='')}"
            method, data = ("DELETE", None) if self.body is None else ("PUT", self.body)
            if data is not None:
                headers["Content-Type"] = f"{sub.payload}; charset=utf-8"
        return urllib.request.Request(url, data=data, headers=headers, method=method)

    def describe(self) -> str:
        what = "deletion" if self.body is None else "version"
        return f"{what} {self.rtype}/{self.rid}/_history/{self.version}"


@dataclass(frozen=True)
class Outcome:
    notification: Notification
    delivered: bool
    attempts: int
    error: str | None  # the last failure, for a notification given up


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect is a failure: the endpoint is what was subscribed
        return None


def send(request: urllib.request.Request, timeout: float) -> None:
    """One attempt; raises with a human message when the endpoint did not answer 2xx."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(65536)
            status = response.status
    except urllib.error.HTTPError as exc:
        raise OSError(f"the endpoint answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise OSError(f"the endpoint could not be reached: {exc.reason}") from None
    except TimeoutError:
        raise OSError(f"the endpoint did not answer within {timeout:g} s") from None
    if not 200 <= status < 300:
        raise OSError(f"the endpoint answered HTTP {status}")


class Deliveries:
    """The queue of notifications of one process and the threads that send them.

    ``retry_delays``, ``timeout``, ``clock``, ``sender`` are injectable (tests use short delays);
    ``still_wanted(notification)`` is asked before every attempt (a subscription deleted, turned off
    or re-pointed meanwhile drops it); ``on_outcome(outcome)`` is called after the success or the
    last failure.
    """

    def __init__(self, on_outcome: Callable[[Outcome], None], still_wanted: Callable[[Notification], bool], *,
                 retry_delays: Sequence[float] = RETRY_DELAYS, timeout: float = TIMEOUT, workers: int = WORKERS,
                 clock: Callable[[], float] = time.monotonic, max_pending: int = MAX_PENDING,
                 sender: Callable[[urllib.request.Request, float], None] = send) -> None:
        self.on_outcome = on_outcome
        self.still_wanted = still_wanted
        self.retry_delays = tuple(retry_delays)
        self.timeout = timeout
        self.workers = workers
        self.clock = clock
        self.sender = sender
        self.max_pending = max_pending
        self.dropped = 0  # notifications dropped because too many were waiting
        self._due: list[tuple[float, int, int, Notification]] = []  # (when, sequence, attempt, notification)
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._stopped = False

    def submit(self, notification: Notification) -> None:
        with self._condition:
            if self._stopped:
                return
            if len(self._due) >= self.max_pending:
                self.dropped += 1
                log.warning("Subscription/%s: %s dropped: %d notifications are already waiting (endpoints down?)",
                            notification.subscription.id, notification.describe(), len(self._due))
                return
            self._push(self.clock(), 1, notification)
            if not self._threads:
                self._start()

    def _push(self, when: float, attempt: int, notification: Notification) -> None:
        heapq.heappush(self._due, (when, next(self._sequence), attempt, notification))
        self._condition.notify()

    def _start(self) -> None:
        for n in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"subscription-delivery-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def pending(self) -> int:
        """Notifications waiting or being sent."""
        with self._condition:
            return len(self._due) + self._busy

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until nothing is waiting or being sent (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._due or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._condition.wait(min(left, 0.05))
            return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads; notifications not sent yet are dropped (logged)."""
        with self._condition:
            self._stopped = True
            if self._due:
                log.warning("%d subscription notification(s) not sent: the server is stopping", len(self._due))
            self._due.clear()
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopped and (not self._due or self._due[0][0] > self.clock()):
                    wait = self._due[0][0] - self.clock() if self._due else None
                    self._condition.wait(wait if wait is None else max(wait, 0.001))
                if self._stopped:
                    return
                _, _, attempt, notification = heapq.heappop(self._due)
                self._busy += 1
            try:
                self._attempt(attempt, notification)
            except Exception:  # never lose the thread
                log.exception("subscription delivery failed unexpectedly")
            finally:
                with self._condition:
                    self._busy -= 1
                    self._condition.notify_all()

    def _attempt(self, attempt: int, notification: Notification) -> None:
        if not self.still_wanted(notification):
            return
        try:
            self.sender(notification.request(), self.timeout)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            if attempt <= len(self.retry_delays):
                delay = self.retry_delays[attempt - 1]
                log.info("Subscription/%s: attempt %d for %s failed (%s); retrying in %g s",
                         notification.subscription.id, attempt, notification.describe(), reason, delay)
                with self._condition:
                    if not self._stopped:
                        self._push(self.clock() + delay, attempt + 1, notification)
                return
            log.warning("Subscription/%s: %s not delivered after %d attempts: %s", notification.subscription.id,
                        notification.describe(), attempt, reason)
            self.on_outcome(Outcome(notification, False, attempt, reason))
            return
        self.on_outcome(Outcome(notification, True, attempt, None))
