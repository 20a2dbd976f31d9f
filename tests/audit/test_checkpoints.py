"""Signed checkpoints (every N events, periodic even without events, never over a
broken chain) and the signing key's move from its file to the MEK-sealed database row."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.db import transaction

from pamportal.audit import chain, conf, offline, signing
from pamportal.audit.checkpoints import audit_chain_check, audit_checkpoint_periodic, checkpoint_verifies
from pamportal.audit.models import AuditChainStatus, AuditCheckpoint, AuditEvent, AuditSigningKey
from pamportal.crypto import mek
from pamportal.nodes import keystore

from .reports import make_trail
from .tampering import sql, triggers_off

pytestmark = pytest.mark.django_db


def test_a_checkpoint_every_n_events(settings):
    settings.PAM_AUDIT_CHECKPOINT_EVERY = 10
    make_trail(25)
    checkpoints = list(AuditCheckpoint.objects.order_by("position"))
    assert [c.position for c in checkpoints] == [10, 20]
    key = AuditSigningKey.objects.get()
    for checkpoint in checkpoints:
        assert checkpoint.reason == AuditCheckpoint.Reason.EVENTS
        assert checkpoint.hash == AuditEvent.objects.get(position=checkpoint.position).hash
        assert checkpoint_verifies(checkpoint, key.public_key)
    forged = checkpoints[0]
    forged.position = 11
    assert not checkpoint_verifies(forged, key.public_key)


def test_inline_checkpoint_failure_does_not_undo_the_action(settings, monkeypatch):
    settings.PAM_AUDIT_CHECKPOINT_EVERY = 5

    def broken(**kwargs):
        raise signing.SigningKeyUnavailable("no key here")

    monkeypatch.setattr("pamportal.audit.checkpoints.audit_checkpoint_sign", broken)
    make_trail(6)
    assert AuditEvent.objects.count() == 6 and not AuditCheckpoint.objects.exists()


def test_periodic_checkpoint_also_without_new_events():
    signing.signing_key_load()  # its creation is event 1
    assert AuditEvent.objects.get(position=1).action == "audit.signing_key_created"
    make_trail(3)
    first = audit_checkpoint_periodic()
    second = audit_checkpoint_periodic()
    assert first["ok"] and second["ok"]
    checkpoints = list(AuditCheckpoint.objects.order_by("time"))
    assert len(checkpoints) == 2 and {c.position for c in checkpoints} == {4}
    assert all(c.reason == AuditCheckpoint.Reason.PERIODIC for c in checkpoints)
    status = AuditChainStatus.objects.get()
    assert status.ok and status.verified_position == 4


def test_checkpoint_message_is_the_one_the_verifier_checks():
    make_trail(2)
    audit_checkpoint_periodic()
    checkpoint = AuditCheckpoint.objects.get()
    key = AuditSigningKey.objects.get()
    message = offline.checkpoint_message(position=2, hash=checkpoint.hash, time=chain.canonical_time(checkpoint.time),
                                         key_id=key.key_id)
    Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key)).verify(base64.b64decode(checkpoint.signature), message)


def test_incremental_check_then_damage_is_found_and_not_signed():
    make_trail(8)
    assert audit_chain_check().ok
    make_trail(4)
    with triggers_off():
        sql("UPDATE audit_auditevent SET target = 'user:mallory' WHERE position = 10")
    outcome = audit_checkpoint_periodic()
    assert not outcome["ok"] and outcome["first_bad_position"] == 10
    assert not AuditCheckpoint.objects.exists()
    status = AuditChainStatus.objects.get()
    assert not status.ok and status.first_bad_position == 10


def test_damage_before_the_verified_position_is_found_by_the_next_check():
    make_trail(8)
    assert audit_chain_check().ok
    with triggers_off():
        sql("UPDATE audit_auditevent SET target = 'x', hash = %s WHERE position = 8", ["f" * 64])
    result = audit_chain_check()
    assert not result.ok and result.first_bad_position == 8


def test_signing_key_file_until_the_mek_then_sealed(audit_data_dir, django_capture_on_commit_callbacks):
    key = signing.signing_key_load()
    path = conf.signing_key_path()
    assert path.exists() and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    row = AuditSigningKey.objects.get()
    assert row.sealed_private == "" and row.public_key == key.public_b64

    keystore.mek_install(os.urandom(mek.MEK_BYTES))
    signing.clear_cache()
    with django_capture_on_commit_callbacks(execute=True):  # the file goes once committed
        moved = signing.signing_key_load()
    assert moved.key_id == key.key_id
    row.refresh_from_db()
    assert row.sealed_private and not path.exists()
    raw = keystore.unseal(purpose=signing.PURPOSE, sealed=row.sealed_private)
    assert moved.private.public_key().public_bytes_raw() == base64.b64decode(row.public_key)
    assert len(raw) == 32 and raw not in row.sealed_private.encode()

    signing.clear_cache()  # loading again is a no-op that still finds the key
    with django_capture_on_commit_callbacks(execute=True):
        again = signing.signing_key_load()
    assert again.key_id == key.key_id and not path.exists()
    assert AuditSigningKey.objects.count() == 1


def test_move_cut_short_by_a_rollback_keeps_the_file(audit_data_dir, django_capture_on_commit_callbacks):
    signing.signing_key_load()
    keystore.mek_install(os.urandom(mek.MEK_BYTES))
    signing.clear_cache()
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            signing.signing_key_load()
            raise RuntimeError("the caller's transaction fails")
    assert conf.signing_key_path().exists()
    assert AuditSigningKey.objects.get().sealed_private == ""
    signing.clear_cache()
    with django_capture_on_commit_callbacks(execute=True):
        signing.signing_key_load()
    assert not conf.signing_key_path().exists() and AuditSigningKey.objects.get().sealed_private


def test_a_lost_private_key_is_reported():
    signing.signing_key_load()
    conf.signing_key_path().unlink()
    signing.clear_cache()
    with pytest.raises(signing.SigningKeyUnavailable, match="missing"):
        signing.signing_key_load()
    rotated = signing.signing_key_rotate()
    assert AuditSigningKey.objects.count() == 2
    assert AuditSigningKey.objects.get(retired_at__isnull=True).key_id == rotated.key_id
