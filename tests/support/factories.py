"""factory-boy factories for the objects tests set up most: users of a role, with the
confirmed TOTP device that role needs to do anything."""

from __future__ import annotations

import factory

from pamportal.accounts.models import TOTPDevice
from pamportal.accounts.roles import TOTP_REQUIRED, Role

PASSWORD = "correct horse battery staple"


class TOTPDeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TOTPDevice

    user = factory.SubFactory("tests.support.factories.UserFactory", totp=False)
    name = "phone"
    confirmed = True


class UserFactory(factory.django.DjangoModelFactory):
    """``UserFactory(administrator=True)`` is an administrator with a confirmed TOTP
    device; ``totp`` defaults to what the role needs and can be forced either way."""

    class Meta:
        model = "accounts.User"
        skip_postgeneration_save = True  # the TOTP device is saved on its own

    class Params:
        totp = factory.LazyAttribute(lambda user: user.role in TOTP_REQUIRED)
        viewer = factory.Trait(role=Role.VIEWER)
        operator = factory.Trait(role=Role.OPERATOR)
        approver = factory.Trait(role=Role.APPROVER)
        administrator = factory.Trait(role=Role.ADMINISTRATOR)
        auditor = factory.Trait(role=Role.AUDITOR)

    username = factory.Sequence(lambda n: f"user-{n}")
    role = Role.VIEWER
    password = PASSWORD
    totp_device = factory.Maybe(
        "totp", yes_declaration=factory.RelatedFactory(TOTPDeviceFactory, factory_related_name="user"),
    )

    @classmethod
    def _create(cls, model_class, *args, password: str = PASSWORD, **kwargs):
        # Through the manager, as the console creates users: the password is hashed.
        return model_class._default_manager.create_user(*args, password=password, **kwargs)
