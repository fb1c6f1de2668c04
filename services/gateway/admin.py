"""Operator commands: `add-tenant` adds an organisation, `set-admins` names its administrators.

Run as `python -m services.gateway.admin COMMAND ...`. An organisation's administrators
can change its settings once signed in, but signing in needs the organisation to exist,
so the first record and its first administrators are written by an operator. `set-admins`
also names administrators for an organisation recorded before administrators existed,
and replaces a list that names nobody who can still sign in.

Secrets are read from the environment (TM_NEW_IMIS_PASSWORD, TM_NEW_TWILIO_AUTH_TOKEN) or
asked for at a terminal, never taken from the command line, where `ps` and shell history
would show them.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from libs.common.imis import ImisClient, ImisError
from libs.common.phones import is_valid_country
from libs.common.process import runtime_from_env
from libs.common.tenants import Tenant, TenantNotFound
from services.gateway.tenant_settings import clean_admins


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.gateway.admin")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add-tenant", help="add an organisation (a Cloud ID) with its iMIS and Twilio accounts")
    add.add_argument("--cloud-id", required=True, help="the Cloud ID staff type at sign-in")
    add.add_argument("--name", required=True, help="the organisation's name")
    add.add_argument("--imis-url", required=True, help="the iMIS site root, e.g. https://imis.example.org")
    add.add_argument("--imis-user", required=True, help="the iMIS service account the background services use")
    add.add_argument("--twilio-sid", required=True, help="the Twilio Account SID (AC...)")
    add.add_argument("--sender", required=True, help="the sender number in E.164, e.g. +18885550100")
    add.add_argument("--email", required=True, help="the administrator's e-mail for failure notices")
    add.add_argument("--country", default="US", help="default country of phone numbers (ISO 3166 code, default US)")
    add.add_argument("--timezone", default="America/New_York", help="the organisation's IANA time zone")
    add.add_argument("--rate", type=float, default=3.0, help="sender rate in segments per second (default 3)")
    add.add_argument("--admin", action="append", required=True, metavar="USERNAME", dest="admins",
                     help="iMIS user name of a staff member who may change the settings (repeat for more)")
    add.add_argument("--replace", action="store_true", help="overwrite an organisation with this Cloud ID")

    admins = commands.add_parser("set-admins", help="replace the administrators of an organisation")
    admins.add_argument("--cloud-id", required=True, help="the organisation's Cloud ID")
    admins.add_argument("--admin", action="append", required=True, metavar="USERNAME", dest="admins",
                        help="iMIS user name of a staff member who may change the settings (repeat for more)")
    return parser


def read_secret(variable: str, prompt: str) -> str:
    """Return the secret from the environment, or ask for it at a terminal."""
    value = os.environ.get(variable, "")
    if value:
        return value
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    raise SystemExit(f"set {variable} in the environment (it is not read from the command line)")


def checked_admins(names: list[str]) -> tuple[str, ...]:
    """Return the --admin values cleaned; exit with what to fix when they are unusable."""
    try:
        return clean_admins(names)
    except ValueError as error:
        raise SystemExit(f"--admin: {error}") from None


def add_tenant(args: argparse.Namespace) -> int:
    if not is_valid_country(args.country):
        raise SystemExit(f"--country must be an ISO 3166 code such as US, got {args.country!r}")
    admins = checked_admins(args.admins)
    runtime = runtime_from_env()
    if not args.replace:
        try:
            runtime.tenants.get(args.cloud_id)
            raise SystemExit(f"Cloud ID {args.cloud_id!r} already exists; add --replace to overwrite it")
        except TenantNotFound:
            pass
    imis_password = read_secret("TM_NEW_IMIS_PASSWORD", "iMIS service account password: ")
    twilio_token = read_secret("TM_NEW_TWILIO_AUTH_TOKEN", "Twilio auth token: ")
    try:
        with ImisClient(args.imis_url, timeout_s=15.0, max_retries=1) as client:
            client.get_token(args.imis_user, imis_password)
    except ImisError as error:
        raise SystemExit(f"iMIS at {args.imis_url} did not accept {args.imis_user!r}: {error.message}") from None
    runtime.tenants.save(Tenant(
        cloud_id=args.cloud_id, name=args.name, imis_base_url=args.imis_url, imis_username=args.imis_user,
        imis_password=imis_password, twilio_account_sid=args.twilio_sid, twilio_auth_token=twilio_token,
        sender_number=args.sender, default_email=args.email, default_country=args.country,
        timezone=args.timezone, sender_rate_sps=args.rate, admins=admins,
    ))
    print(f"added organisation {args.cloud_id!r}; staff can now sign in with it, and {', '.join(admins)} "
          "can change its settings")
    return 0


def set_admins(args: argparse.Namespace) -> int:
    admins = checked_admins(args.admins)
    runtime = runtime_from_env()
    try:
        before = runtime.tenants.get(args.cloud_id).admins
        runtime.tenants.set_admins(args.cloud_id, admins)
    except TenantNotFound:
        raise SystemExit(f"no organisation has the Cloud ID {args.cloud_id!r}: check it, "
                         "or add the organisation with add-tenant") from None
    print(f"administrators of {args.cloud_id!r}: {', '.join(admins)} (before: {', '.join(before) or 'none'})")
    return 0


COMMANDS = {"add-tenant": add_tenant, "set-admins": set_admins}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
