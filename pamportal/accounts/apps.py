from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "pamportal.accounts"
    label = "accounts"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (audit receivers for login, logout, lockout)
