"""Move every django-otp plaintext TOTP device (otp_totp.TOTPDevice, hex ``key``) into
accounts.TOTPDevice with its secret sealed (see pamportal.accounts.totp_seal), then delete
the plaintext rows. Sessions verified with an old device must verify again."""

from django.db import migrations


def seal_plaintext_devices(apps, schema_editor):
    from pamportal.accounts import totp_seal

    Plain = apps.get_model("otp_totp", "TOTPDevice")
    Sealed = apps.get_model("accounts", "TOTPDevice")
    for old in Plain.objects.order_by("pk"):
        new = Sealed.objects.create(
            user_id=old.user_id,
            name=old.name,
            confirmed=old.confirmed,
            sealed_key=totp_seal.seal(bytes.fromhex(old.key), user_id=old.user_id),
            step=old.step,
            t0=old.t0,
            digits=old.digits,
            tolerance=old.tolerance,
            drift=old.drift,
            last_t=old.last_t,
            throttling_failure_timestamp=old.throttling_failure_timestamp,
            throttling_failure_count=old.throttling_failure_count,
            last_used_at=old.last_used_at,
        )
        # created_at is auto_now_add: keep the original enrolment time.
        Sealed.objects.filter(pk=new.pk).update(created_at=old.created_at)
    Plain.objects.all().delete()


def unseal_to_plaintext(apps, schema_editor):
    from pamportal.accounts import totp_seal

    Plain = apps.get_model("otp_totp", "TOTPDevice")
    Sealed = apps.get_model("accounts", "TOTPDevice")
    for device in Sealed.objects.order_by("pk"):
        old = Plain.objects.create(
            user_id=device.user_id,
            name=device.name,
            confirmed=device.confirmed,
            key=totp_seal.unseal(device.sealed_key, user_id=device.user_id).hex(),
            step=device.step,
            t0=device.t0,
            digits=device.digits,
            tolerance=device.tolerance,
            drift=device.drift,
            last_t=device.last_t,
            throttling_failure_timestamp=device.throttling_failure_timestamp,
            throttling_failure_count=device.throttling_failure_count,
            last_used_at=device.last_used_at,
        )
        Plain.objects.filter(pk=old.pk).update(created_at=device.created_at)
    Sealed.objects.all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0003_totpdevice"),
        ("otp_totp", "0003_add_timestamps"),
    ]

    operations = [migrations.RunPython(seal_plaintext_devices, unseal_to_plaintext)]
