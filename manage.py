#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""
import os
import sys


def main() -> None:
    # Everything a node writes (database, logs, keys, etcd and beat files) is for its
    # own user only; the processes `serve` starts inherit this mask.
    os.umask(0o077)
    if sys.argv[1:2] == ["licence_mint"]:
        # Signing a licence file needs no settings, database or data directory: run it
        # before the settings would create ./var (PAM_DATA_DIR) and its files.
        from pamportal.licensing.management.commands.licence_mint import main as licence_mint

        sys.exit(licence_mint(sys.argv[2:]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamportal.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
