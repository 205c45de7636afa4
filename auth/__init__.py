"""The SMART on FHIR authorization server (App Launch 2.x, Backend Services), built on authlib.

Wiring (``fhir_server.app.create_app``)::

    import auth
    auth.init_app(app, server)      # blueprints /auth/... and discovery; app.extensions["smart_auth"]

Endpoints: ``/fhir/.well-known/smart-configuration``, ``/auth/.well-known/openid-configuration``,
``/auth/.well-known/jwks.json``, ``/auth/authorize``, ``/auth/token``, ``/auth/introspect``,
``/auth/revoke``, ``/auth/register``, ``/auth/launch``, ``/auth/userinfo`` and the sign-in pages
``/auth/login``, ``/auth/code``, ``/auth/approve``.

Access tokens are RS256 JWTs with the claims of docs/adr/0005-access-tokens.md. What a resource
server verifying them needs (same process or not):

* :func:`token_authority` (``auth.token_authority(store)``): ``key_set()`` (joserfc KeySet),
  ``jwks()``, ``is_revoked(jti)``, ``verify(token, audience=..., issuer=...)``;
* :func:`is_revoked` (``auth.is_revoked(store, jti)``) for the deny list alone;
* or, from another process, the JWKS URL ``{issuer}/.well-known/jwks.json`` and RFC 7662
  introspection at ``{issuer}/introspect``.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from auth.tokens import TokenAuthority, TokenError, token_authority

__all__ = ["init_app", "token_authority", "is_revoked", "TokenAuthority", "TokenError", "capability_security"]


def init_app(app: Any, server: Any, *, clock: Callable[[], float] = time.time):
    """Set the authorization server up on a Flask app built for ``server`` (a FHIRServer).

    Returns the :class:`auth.server.SmartAuth` (also ``app.extensions["smart_auth"]``); its ``clock``
    attribute may be replaced (tests).
    """
    from auth import discovery, views
    from auth.senders import build_sender
    from auth.server import SmartAuth
    from auth.storage import open_auth_store

    smart = SmartAuth(server.settings, server.store, open_auth_store(server.store),
                      build_sender(server.settings), clock=clock)
    # an in-process resource server shares its keys, clock and deny list
    token_authority(server.store, smart.authority)
    app.extensions["smart_auth"] = smart
    app.register_blueprint(views.bp, url_prefix="/auth")
    app.register_blueprint(discovery.bp)
    return smart


def is_revoked(store: Any, jti: str) -> bool:
    """True if the access token ``jti`` was revoked (RFC 7009) — the deny list in ``store``'s database."""
    return token_authority(store).is_revoked(jti)


def capability_security(issuer: str) -> dict:
    """The ``CapabilityStatement.rest.security`` element announcing SMART (oauth-uris extension)."""
    from auth.discovery import capability_security as build
    return build(issuer)
