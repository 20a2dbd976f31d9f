"""Sign a licence with the TEST vendor key, for tests and development. Refused under
production settings, where test-key licences are refused anyway.

Signing a file needs no database and no data directory: ``manage.py licence_mint``
runs ``main`` before Django's settings are loaded (see manage.py), so it creates
nothing under ./var; ``call_command("licence_mint", ...)`` runs the same code."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from pamportal.crypto import licence as licence_format

HELP = "Mint a licence file signed with the TEST vendor key (development and tests only)."
PRODUCTION_REFUSAL = (
    "licence_mint signs with the TEST vendor key, which production settings refuse; "
    "it does not run with PAM_ENV=production. Production licences come from the vendor."
)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


def _moment(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def add_arguments(parser) -> None:
    parser.add_argument("--customer", required=True)
    parser.add_argument("--edition", required=True)
    parser.add_argument("--max-nodes", required=True, type=_positive)
    parser.add_argument("--days", required=True, type=_positive, help="days of validity from --not-before")
    parser.add_argument("--features", default="", help="comma-separated feature names")
    parser.add_argument("--not-before", type=_moment, help="ISO 8601 start (default: now, UTC)")
    parser.add_argument("--licence-id", help="default: a new UUID")
    parser.add_argument("--out", type=Path, help="write the licence here (default: standard output)")


def _production() -> bool:
    """The settings' rule (PAM_ENV), read without loading the settings."""
    return os.environ.get("PAM_ENV", "development") == "production"


def mint(options: dict) -> tuple[str, str]:
    """Sign the licence ``options`` describe and write it to ``--out``. Returns what to
    print on standard output (the licence, without ``--out``) and on standard error."""
    if _production():
        raise CommandError(PRODUCTION_REFUSAL)
    not_before = (options["not_before"] or datetime.now(timezone.utc)).replace(microsecond=0)
    features = [name.strip() for name in options["features"].split(",") if name.strip()]
    data = licence_format.mint(
        customer=options["customer"],
        edition=options["edition"],
        max_nodes=options["max_nodes"],
        features=features,
        not_before=not_before,
        not_after=not_before + timedelta(days=options["days"]),
        licence_id=options["licence_id"],
    )
    try:  # the same checks an upload makes, so a bad argument is reported here
        verified = licence_format.verify_licence(data, allow_test_keys=True)
    except licence_format.LicenceError as error:
        raise CommandError(f"Cannot mint this licence: {error.message}") from None
    if options["out"]:
        path: Path = options["out"]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return "", (
            f"Wrote {path}: licence {verified.licence_id} for {verified.customer} "
            f"({verified.edition}, {verified.max_nodes} nodes) until "
            f"{licence_format.format_when(verified.not_after)}, signed with the TEST key.\n"
        )
    text = data.decode("utf-8")
    return (text if text.endswith("\n") else text + "\n"), ""


def main(argv: list[str] | None = None) -> int:
    """``manage.py licence_mint`` without Django's settings: no data dir is created."""
    parser = argparse.ArgumentParser(prog="manage.py licence_mint", description=HELP)
    add_arguments(parser)
    options = vars(parser.parse_args(argv))
    try:
        out, err = mint(options)
    except CommandError as error:
        sys.stderr.write(f"CommandError: {error}\n")
        return 1
    sys.stdout.write(out)
    sys.stderr.write(err)
    return 0


class Command(BaseCommand):
    help = HELP
    requires_system_checks: list = []

    def add_arguments(self, parser):
        add_arguments(parser)

    def handle(self, *args, **options):
        out, err = mint(options)
        self.stdout.write(out, ending="")
        self.stderr.write(err, ending="")
