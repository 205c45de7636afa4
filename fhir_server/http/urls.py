"""The FHIR base URL a request is answered under: for Location headers, Bundle links and traces."""
from __future__ import annotations

from flask import current_app, request

_BASES: dict[tuple, str] = {}  # (scheme, Host header, script root) -> base URL: the few a process sees


def fhir_base() -> str:
    """``Settings.base_url`` when configured, else what the client called: ``{scheme}://{host}{root}/fhir``.

    Werkzeug rebuilds ``request.host_url`` (IRI decoding, host checks) on every access, which costs more
    than a read by id itself; the handful of hosts a process is called under are worked out once."""
    configured = current_app.extensions["fhir"].settings.base_url
    if configured:
        return configured.rstrip("/")
    environ = request.environ
    key = (environ.get("wsgi.url_scheme"), environ.get("HTTP_HOST") or environ.get("SERVER_NAME"),
           environ.get("SERVER_PORT"), request.root_path)
    base = _BASES.get(key)
    if base is None:
        base = request.host_url.rstrip("/") + "/fhir"
        if len(_BASES) < 64:  # a client sending random Host headers must not grow it without bound
            _BASES[key] = base
    return base
