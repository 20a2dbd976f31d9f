"""Print the one-time setup token at the node's console (issuing one if none is valid)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from pamportal.core import context
from pamportal.setup.selectors import setup_is_complete, setup_token_current
from pamportal.setup.token import setup_token_issue


class Command(BaseCommand):
    help = "Print the setup token for the first-boot wizard; issue a new one if none is valid."

    def add_arguments(self, parser):
        parser.add_argument("--new", action="store_true", help="Issue a new token even if the current one is valid.")

    def handle(self, *args, new: bool = False, **options):
        if setup_is_complete():
            self.stdout.write("Setup is complete: this node has an administrator, so there is no setup token. Log in instead.")
            return
        with context.acting(actor_name="console"):
            issued = None if new else setup_token_current()
            if issued is None:
                issued = setup_token_issue()
        self.stdout.write(f"Setup token: {issued.token}")
        self.stdout.write(
            f"Valid until {issued.expires_at:%Y-%m-%d %H:%M} UTC, once. "
            f"Open https://{settings.PAM_NODE_ADDRESS}:{settings.PAM_HTTPS_PORT}/setup/ and enter it."
        )
