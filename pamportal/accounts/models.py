"""Console users. Roles, not Django's permission tables, decide what a user may do."""

import logging
import time
from base64 import b32encode
from urllib.parse import quote, urlencode

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django_otp.models import Device, ThrottlingMixin, TimestampMixin
from django_otp.oath import TOTP
from django_otp.util import random_hex

from . import totp_seal
from .roles import TOTP_REQUIRED, Role

logger = logging.getLogger(__name__)


class User(AbstractUser):
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.VIEWER)
    must_change_password = models.BooleanField(default=False)

    @property
    def totp_required(self) -> bool:
        return self.role in TOTP_REQUIRED

    @property
    def is_administrator(self) -> bool:
        return self.role == Role.ADMINISTRATOR


def default_key() -> str:
    """A new TOTP secret, hex: 20 random bytes, as django-otp's own default."""
    return random_hex(20)


class TOTPDevice(TimestampMixin, ThrottlingMixin, Device):
    """A TOTP authenticator whose secret is sealed at rest (see ``totp_seal``).

    Fields and checks follow django-otp's ``otp_totp.models.TOTPDevice`` (django-otp
    1.7.5): ``step``, ``t0``, ``digits``, ``tolerance``, ``drift`` and ``last_t`` mean
    the same, ``verify_token`` and ``config_url`` are its logic. Only the secret
    differs: ``key`` (hex) is a property over ``sealed_key``, sealed on save for the
    device's user, so ``TOTPDevice(user=u, key=hexkey)`` keeps working.
    """

    # Its own reverse names: otp_totp's plaintext model stays installed for the migration
    # that moves its rows here, and would clash on ``totpdevice_set``.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="totp_devices",
        related_query_name="totp_device",
        help_text="The user that this device belongs to.",
    )
    sealed_key = models.BinaryField(editable=False)
    step = models.PositiveSmallIntegerField(default=30, help_text="The time step in seconds.")
    t0 = models.BigIntegerField(default=0, help_text="The Unix time at which to begin counting steps.")
    digits = models.PositiveSmallIntegerField(
        choices=[(6, 6), (8, 8)], default=6, help_text="The number of digits to expect in a token."
    )
    tolerance = models.PositiveSmallIntegerField(
        default=1, help_text="The number of time steps in the past or future to allow."
    )
    drift = models.SmallIntegerField(
        default=0, help_text="The number of time steps the prover is known to deviate from our clock."
    )
    last_t = models.BigIntegerField(
        default=-1,
        help_text="The t value of the latest verified token. The next token must be at a higher time step.",
    )

    # The secret in clear, in memory only; ``_key_dirty`` means it still has to be sealed.
    _plain_key: str | None = None
    _key_dirty = False
    # Why the last verification could not even be tried (the secret would not open).
    unusable_reason = ""

    class Meta(Device.Meta):
        verbose_name = "TOTP device"

    @property
    def key(self) -> str:
        if self._plain_key is None:
            if not self.sealed_key:
                if self.pk is not None:
                    raise totp_seal.TOTPKeyUnreadable("the device has no sealed TOTP secret")
                self.key = default_key()
            else:
                self._plain_key = totp_seal.unseal(self.sealed_key, user_id=self.user_id).hex()
        return self._plain_key

    @key.setter
    def key(self, value: str) -> None:
        raw = bytes.fromhex(value)  # ValueError for anything but hex, as otp_totp's validator
        if not 0 < len(raw) <= 40:
            raise ValueError("a TOTP secret is 1 to 40 bytes")
        self._plain_key = raw.hex()
        self._key_dirty = True

    def key_readable(self) -> bool:
        try:
            self.key
        except totp_seal.TOTPKeyUnreadable as unreadable:
            logger.error("TOTP device %s of user %s is unusable: %s", self.pk, self.user_id, unreadable)
            return False
        return True

    @property
    def bin_key(self) -> bytes:
        return bytes.fromhex(self.key)

    def save(self, *args, **kwargs):
        if self._plain_key is None and not self.sealed_key:
            self.key = default_key()
        if self._key_dirty:
            self.sealed_key = totp_seal.seal(bytes.fromhex(self._plain_key), user_id=self.user_id)
            self._key_dirty = False
            if kwargs.get("update_fields") is not None:
                kwargs["update_fields"] = {*kwargs["update_fields"], "sealed_key"}
        super().save(*args, **kwargs)

    def refresh_from_db(self, *args, **kwargs):
        super().refresh_from_db(*args, **kwargs)
        if not self._key_dirty:
            self._plain_key = None  # open the (possibly new) sealed secret again when asked

    def verify_token(self, token) -> bool:
        # django_otp/plugins/otp_totp/models.py TOTPDevice.verify_token, with one
        # addition: a secret that will not open is refused and logged, not raised.
        self.unusable_reason = ""
        verify_allowed, _ = self.verify_is_allowed()
        if not verify_allowed:
            return False
        try:
            key = self.bin_key
        except totp_seal.TOTPKeyUnreadable as unreadable:
            self.unusable_reason = str(unreadable)
            logger.error("TOTP device %s of user %s refused a code: %s", self.pk, self.user_id, unreadable)
            return False
        try:
            token = int(token)
        except Exception:
            verified = False
        else:
            totp = TOTP(key, self.step, self.t0, self.digits, self.drift)
            totp.time = time.time()
            verified = totp.verify(token, self.tolerance, self.last_t + 1)
            if verified:
                self.last_t = totp.t()
                if getattr(settings, "OTP_TOTP_SYNC", True):
                    self.drift = totp.drift
                self.throttle_reset(commit=False)
                self.set_last_used_timestamp(commit=False)
                self.save()
        if not verified:
            self.throttle_increment(commit=True)
        return verified

    def get_throttle_factor(self):
        return getattr(settings, "OTP_TOTP_THROTTLE_FACTOR", 1)

    @property
    def config_url(self) -> str:
        """The otpauth:// URL for authenticator apps, as otp_totp's ``config_url``."""
        label = str(self.user.get_username())
        params = urlencode(
            {"secret": b32encode(self.bin_key), "algorithm": "SHA1", "digits": self.digits, "period": self.step}
        )
        issuer = getattr(settings, "OTP_TOTP_ISSUER", None)
        if callable(issuer):
            issuer = issuer(self)
        if isinstance(issuer, str) and issuer:
            issuer = issuer.replace(":", "")
            label = f"{issuer}:{label}"
            params += f"&issuer={quote(issuer)}"
        return f"otpauth://totp/{quote(label)}?{params}"
