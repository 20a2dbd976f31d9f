"""pamportal: installation, clustering and upgrade console of a PAM server appliance."""

from .celery import app as celery_app

__all__ = ("celery_app",)
