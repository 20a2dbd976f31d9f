"""Reads about first-boot state."""

from django.contrib.auth import get_user_model

from pamportal.accounts.roles import Role


def setup_is_complete() -> bool:
    """Setup is complete once an active administrator exists."""
    return get_user_model().objects.filter(role=Role.ADMINISTRATOR, is_active=True).exists()
