"""Where this server may send notifications (server-side request forgery guard).

A rest-hook Subscription makes the server send HTTP requests to a URL its client chose. Without a
limit, a client allowed to subscribe could aim the server at what only the server reaches: a cloud
instance's metadata service (``169.254.169.254``: credentials), or any internal address. Two guards:

* the operator's **allow-list** (``Settings.subscription_endpoints``, ``FHIR_SERVER_SUBSCRIPTION_ENDPOINTS``:
  comma-separated URL prefixes such as ``https://hooks.hospital.example/fhir``): when set, a Subscription
  whose endpoint is under none of them is refused (400, ``Subscription.channel.endpoint``). Unset, any
  http(s) endpoint is accepted, as before: a deployment should set it;
* whatever the list, **no notification goes to a link-local, unspecified or multicast address**
  (metadata services live there, and no notification receiver does): refused when the Subscription is
  written if the host is such an address, and checked again before each delivery on the addresses the
  host name resolves to (a name may point anywhere, and change).
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Prefix:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def of(cls, url: str) -> "_Prefix":
        parts = urlsplit(url.strip())
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"subscription endpoint prefix '{url}' is not an absolute http(s) URL")
        return cls(parts.scheme, parts.hostname.lower(), parts.port or DEFAULT_PORTS[parts.scheme],
                   parts.path.rstrip("/"))

    def covers(self, parts: SplitResult) -> bool:
        if (parts.scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(parts.scheme)) != \
                (self.scheme, self.host, self.port):
            return False
        path = parts.path
        return not self.path or path == self.path or path.startswith(self.path + "/")


def forbidden_address(address: str) -> bool:
    """Whether no notification may go to this IP address (link-local, unspecified, multicast)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast


Resolver = Callable[[str, int], Iterable[str]]


def resolve(host: str, port: int) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


class EndpointPolicy:
    """The allow-list and the address guard (module docstring)."""

    def __init__(self, allowed: Iterable[str] = (), resolver: Resolver = resolve):
        self.prefixes = tuple(_Prefix.of(url) for url in allowed if url.strip())
        self.resolver = resolver

    def refusal(self, endpoint: str) -> str | None:
        """Why a Subscription may not name ``endpoint`` (an absolute http(s) URL), or None."""
        parts = urlsplit(endpoint)
        if forbidden_address(parts.hostname or ""):
            return f"Notifications are never sent to {parts.hostname} (link-local, unspecified or multicast)"
        if self.prefixes and not any(p.covers(parts) for p in self.prefixes):
            return ("This server sends notifications only under the endpoints its operator allowed: "
                    + ", ".join(f"{p.scheme}://{p.host}:{p.port}{p.path}" for p in self.prefixes))
        return None

    def check_delivery(self, url: str) -> None:
        """Raise OSError (a failed attempt) when ``url`` is not allowed or resolves to a forbidden address."""
        reason = self.refusal(url)
        if reason is None:
            parts = urlsplit(url)
            try:
                addresses = self.resolver(parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme, 80))
            except OSError:
                return  # unresolvable: the request itself fails with the resolver's message
            bad = sorted({a for a in addresses if forbidden_address(a)})
            if bad:
                reason = f"{parts.hostname} resolves to {', '.join(bad)}, where notifications are never sent"
        if reason is not None:
            raise OSError(reason)
