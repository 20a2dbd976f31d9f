"""Who sees which jobs: each kind names its view capability. Audit exports (and their
output) are for those who may read the trail; preflight runs are for every role."""

from __future__ import annotations

import pytest
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.jobs import KIND as AUDIT_EXPORT
from pamportal.jobs.engine import JobNotFound
from pamportal.jobs.selectors import access_job_by_id, job_list
from pamportal.jobs.services import job_create
from pamportal.preflight.services import KIND as PREFLIGHT

pytestmark = pytest.mark.django_db

READS_AUDIT = {Role.AUDITOR, Role.ADMINISTRATOR}


@pytest.fixture
def jobs():
    export = job_create(kind=AUDIT_EXPORT, params={"export_id": "none"}, enqueue=False, title="Audit export secret")
    preflight = job_create(kind=PREFLIGHT, enqueue=False, title="Preflight checks for node")
    return export, preflight


@pytest.mark.parametrize("role", list(Role))
def test_list_and_detail_follow_the_kinds_view_capability(as_role, jobs, role):
    export, preflight = jobs
    client = as_role(role)
    listing = client.get(reverse("jobs:list")).content.decode()
    assert "Preflight checks for node" in listing
    assert ("Audit export secret" in listing) == (role in READS_AUDIT)

    assert client.get(reverse("jobs:detail", args=[preflight.pk])).status_code == 200
    expected = 200 if role in READS_AUDIT else 404
    assert client.get(reverse("jobs:detail", args=[export.pk])).status_code == expected
    assert client.get(reverse("jobs:progress", args=[export.pk])).status_code == expected


@pytest.mark.parametrize("role", list(Role))
def test_selectors_apply_it_and_missing_looks_like_forbidden(make_user, admin_user, jobs, role):
    export, preflight = jobs
    user = admin_user if role == Role.ADMINISTRATOR else make_user(f"sel-{role}", role)
    visible = set(job_list(user=user).values_list("pk", flat=True))
    assert preflight.pk in visible and (export.pk in visible) == (role in READS_AUDIT)
    assert access_job_by_id(user, preflight.pk) == preflight
    if role in READS_AUDIT:
        assert access_job_by_id(user, export.pk) == export
    else:
        with pytest.raises(JobNotFound) as forbidden:
            access_job_by_id(user, export.pk)
        with pytest.raises(JobNotFound) as missing:
            access_job_by_id(user, export.pk + 1000)
        assert str(forbidden.value) == f"no job #{export.pk}" and str(missing.value) == f"no job #{export.pk + 1000}"
