"""Operators' commands: ``fhir-server clients add|revoke``, ``users add``, ``launch``.

Each takes ``--store URL`` like ``serve`` (default ``$FHIR_SERVER_STORE``), writes into the store's
database (so a running server sees the change at once) and prints exactly one JSON object on
stdout; a refusal prints ``{"error": ...}`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fhir_server.settings import DEFAULT_STORE, Settings

STORE_HELP = f"sqlite:///PATH or mongodb://... (default $FHIR_SERVER_STORE or {DEFAULT_STORE})"


def add_parsers(sub) -> None:
    """Add the ``clients``, ``users`` and ``launch`` subcommands to the ``fhir-server`` parser."""
    clients = sub.add_parser("clients", help="register SMART client applications")
    clients_sub = clients.add_subparsers(dest="action", required=True)
    add = clients_sub.add_parser("add", help="register a client; prints its client_id (and client_secret)")
    add.add_argument("--store", help=STORE_HELP)
    add.add_argument("--name", required=True, help="the name people see on the approval screen")
    add.add_argument("--redirect-uri", action="append", dest="redirect_uris", default=[],
                     help="a redirect URI (repeatable; required for authorization_code)")
    add.add_argument("--public", action="store_true", help="a public client (no secret, PKCE only)")
    add.add_argument("--scope", help='the scopes it may be granted, e.g. "launch/patient patient/*.rs" '
                                     "(default: any supported scope of its grant type)")
    keys = add.add_mutually_exclusive_group()
    keys.add_argument("--jwks", type=Path, help="file with the client's public JWKS (private_key_jwt)")
    keys.add_argument("--jwks-url", help="URL of the client's public JWKS (private_key_jwt)")
    add.add_argument("--grant", choices=["authorization_code", "client_credentials"],
                     default="authorization_code")
    revoke = clients_sub.add_parser("revoke", help="withdraw a client: no new token, and the tokens it holds "
                                                   "stop working (within seconds); its subscriptions stop")
    revoke.add_argument("--store", help=STORE_HELP)
    revoke.add_argument("client_id")

    users = sub.add_parser("users", help="manage user accounts")
    users_sub = users.add_subparsers(dest="action", required=True)
    uadd = users_sub.add_parser("add", help="create an account")
    uadd.add_argument("--store", help=STORE_HELP)
    uadd.add_argument("--username", required=True)
    uadd.add_argument("--password", required=True)
    uadd.add_argument("--role", required=True, choices=["patient", "practitioner", "related-person", "admin"])
    uadd.add_argument("--email", help="where one-time codes are sent (preferred over --phone)")
    uadd.add_argument("--phone", help="where one-time codes are sent by SMS when there is no e-mail")
    uadd.add_argument("--fhir-user", help="Patient/ID, Practitioner/ID or RelatedPerson/ID")

    launch = sub.add_parser("launch", help="create an EHR launch context; prints the launch value")
    launch.add_argument("--store", help=STORE_HELP)
    launch.add_argument("--patient", required=True, help="the Patient id the launched app works on")
    launch.add_argument("--user", help="the account expected to sign in (optional)")
    launch.add_argument("--encounter", help="an Encounter id for the context (optional)")


def _auth_store(args):
    from auth.storage import open_auth_store
    from fhir_server.store import open_store
    store = open_store(Settings.from_env(store_url=args.store).store_url)
    return store, open_auth_store(store)


def _emit(obj: dict, status: int = 0) -> int:
    print(json.dumps(obj, ensure_ascii=False))
    return status


def _run(args, action) -> int:
    from auth.registry import RegistryError
    try:
        store, auth_store = _auth_store(args)
    except (ValueError, OSError) as exc:
        return _emit({"error": f"cannot open the store: {exc}"}, 2)
    try:
        return _emit(action(auth_store))
    except RegistryError as exc:
        return _emit({"error": str(exc)}, 2)
    finally:
        store.close()


def clients(args: argparse.Namespace) -> int:
    from auth.registry import RegistryError, register_client, revoke_client

    if args.action == "revoke":
        return _run(args, lambda auth_store: revoke_client(auth_store, args.client_id, time.time()))

    def add(auth_store) -> dict:
        jwks = None
        if args.jwks is not None:
            try:
                jwks = args.jwks.read_text(encoding="utf-8")
            except OSError as exc:
                raise RegistryError(f"cannot read {args.jwks}: {exc}") from None
        record, secret = register_client(auth_store, name=args.name, now=time.time(),
                                         redirect_uris=args.redirect_uris, public=args.public,
                                         scope=args.scope, jwks=jwks, jwks_uri=args.jwks_url,
                                         grant=args.grant)
        out = {"client_id": record["client_id"]}
        if secret:
            out["client_secret"] = secret
        out.update(client_name=record["client_name"],
                   token_endpoint_auth_method=record["token_endpoint_auth_method"],
                   grant_types=record["grant_types"], redirect_uris=record["redirect_uris"],
                   scope=record["scope"] or None)
        return out

    return _run(args, add)


def users(args: argparse.Namespace) -> int:
    from auth.registry import add_user

    def add(auth_store) -> dict:
        account = add_user(auth_store, username=args.username, password=args.password, role=args.role,
                           now=time.time(), email=args.email, phone=args.phone, fhir_user=args.fhir_user)
        return {"id": account.id, "username": account.username, "role": account.role,
                "fhirUser": account.fhir_user, "email": account.email, "phone": account.phone}

    return _run(args, add)


def launch(args: argparse.Namespace) -> int:
    from auth.registry import create_launch

    return _run(args, lambda auth_store: create_launch(auth_store, patient=args.patient, now=time.time(),
                                                       user=args.user, encounter=args.encounter))


COMMANDS = {"clients": clients, "users": users, "launch": launch}

if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="auth")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args()
    sys.exit(COMMANDS[parsed.command](parsed))
