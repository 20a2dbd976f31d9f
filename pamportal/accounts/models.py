"""Console users. Roles, not Django's permission tables, decide what a user may do."""

from django.contrib.auth.models import AbstractUser
from django.db import models

from .roles import TOTP_REQUIRED, Role


class User(AbstractUser):
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.VIEWER)
    must_change_password = models.BooleanField(default=False)

    @property
    def totp_required(self) -> bool:
        return self.role in TOTP_REQUIRED

    @property
    def is_administrator(self) -> bool:
        return self.role == Role.ADMINISTRATOR
