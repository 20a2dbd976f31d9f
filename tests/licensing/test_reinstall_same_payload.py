"""The "already installed" check compares the verified payload, not the file's bytes:
a copy that differs only where the signature does not reach (whitespace, the order of
the envelope's fields) is the same licence and is refused, with no new history row."""

from __future__ import annotations

import json

import pytest

from pamportal.audit.actions import AuditAction
from pamportal.audit.models import AuditEvent
from pamportal.licensing.models import Licence
from pamportal.licensing.services import LicenceRefused, licence_install
from tests.licensing.helpers import minted

pytestmark = pytest.mark.django_db


def _respelled(data: bytes) -> list[bytes]:
    document = json.loads(data)
    return [
        data.replace(b"\n", b"\r\n") + b"\n\n   ",
        b"  " + data.replace(b": ", b":\t "),
        json.dumps(dict(reversed(list(document.items())))).encode(),
    ]


@pytest.mark.parametrize("variant", range(3))
def test_a_respelled_copy_of_the_installed_licence_is_refused(admin_user, variant):
    data = minted(licence_id="LIC-SAME")
    licence_install(data=data, user=admin_user)
    copy = _respelled(data)[variant]
    assert copy != data
    installed = AuditEvent.objects.filter(action=AuditAction.LICENCE_INSTALLED).count()
    with pytest.raises(LicenceRefused) as refused:
        licence_install(data=copy, user=admin_user)
    assert refused.value.code == "already_installed"
    assert Licence.objects.count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.LICENCE_INSTALLED).count() == installed


def test_a_licence_with_another_payload_still_replaces_it(admin_user):
    licence_install(data=minted(licence_id="LIC-SAME", max_nodes=5), user=admin_user)
    licence_install(data=minted(licence_id="LIC-SAME", max_nodes=7), user=admin_user)
    assert Licence.objects.count() == 2
    assert Licence.objects.get(replaced_at__isnull=True).max_nodes == 7
