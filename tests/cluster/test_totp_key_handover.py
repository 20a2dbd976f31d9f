"""A joining replica adopts the cluster's TOTP seal key: the leader hands it over sealed
under the MEK, only when the follower is to share the cluster's database."""

from __future__ import annotations

import pytest
from django.test import Client
from django.utils import timezone

from pamportal.accounts import totp_seal
from pamportal.cluster import protocol
from pamportal.cluster.api import join_status_payload
from pamportal.cluster.follower_models import JoinReplica
from pamportal.cluster.models import RequestState
from pamportal.crypto.mek import UnsealError
from pamportal.nodes import keystore
from tests.cluster.conftest import join_request_made

pytestmark = pytest.mark.django_db


def handed_over(request, *, replicated: bool) -> dict:
    request.state, request.handed_over_at = RequestState.RUNNING, timezone.now()
    request.etcd_initial_cluster, request.etcd_member_name, request.etcd_member_id = "n=https://127.0.0.155:2380", "n", "1"
    request.save()
    if replicated:
        JoinReplica.objects.get_or_create(request=request, defaults={"hosts": ["127.0.0.155:5432"]})
    return join_status_payload(request)["handover"]


def test_the_key_goes_to_a_replica_only_and_opens_with_the_mek_alone(leader):
    request, _body = join_request_made(Client(), leader["admin"], leader["mek"])
    assert "totp_seal_key" not in handed_over(request, replicated=False)["database"]

    sealed = handed_over(request, replicated=True)["database"]["totp_seal_key"]
    key = totp_seal.key_export()
    assert key.hex() not in sealed and key.hex().upper() not in sealed
    assert keystore.unseal(purpose=protocol.TOTP_KEY_PURPOSE, sealed=sealed) == key
    with pytest.raises(UnsealError):
        keystore.unseal(purpose="another purpose", sealed=sealed)
