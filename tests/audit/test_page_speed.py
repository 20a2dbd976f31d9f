"""The audit page's faster reads give what the ORM reads they replace gave: the chain
head, the badge's and the key's rows (one query), the newest exports, the event rows
of each page (found from the top position instead of by OFFSET), their markup, and
the filter form that shares its choices between instances."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django import forms
from django.core.paginator import Paginator
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from pamportal.accounts.roles import Role
from pamportal.audit import selectors, signing
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.checkpoints import audit_checkpoint_periodic, chain_status_record
from pamportal.audit.exports import audit_export_create
from pamportal.audit.forms import AuditFilterForm, ExportForm, FlatSelect
from pamportal.audit.models import (
    AuditChainStatus,
    AuditCheckpoint,
    AuditEvent,
    AuditExport,
    AuditHead,
    AuditSigningKey,
)
from pamportal.audit.services import audit_record
from pamportal.audit.templatetags.audit_rows import audit_rows

pytestmark = pytest.mark.django_db


def _record(count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        audit_record(action=AuditAction.LOGIN_SUCCEEDED if i % 3 else AuditAction.LOGIN_FAILED,
                     outcome=Outcome.SUCCEEDED if i % 3 else Outcome.FAILED,
                     target=f"user:u{i % 7} <&>", details={"i": i}, actor_name=f"u{i % 7}\"'")


def _fields(obj) -> dict | None:
    if obj is None:
        return None
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def _orm_trail() -> tuple:
    head = AuditHead.objects.filter(pk=1).values_list("position", "hash").first() or (0, selectors.chain.GENESIS_HASH)
    return (
        tuple(head),
        _fields(AuditChainStatus.objects.filter(pk=1).first()),
        _fields(AuditCheckpoint.objects.order_by("-time").first()),
        _fields(signing.active_public_key()),
    )


def _trail() -> tuple:
    trail = selectors.audit_trail_read()
    return (trail.head, _fields(trail.chain_status), _fields(trail.checkpoint), _fields(trail.signing_key))


def test_head_and_trail_read_as_the_orm_reads_them():
    assert selectors.audit_head() == (0, selectors.chain.GENESIS_HASH)
    assert _trail() == _orm_trail() == ((0, selectors.chain.GENESIS_HASH), None, None, None)
    _record(5)
    assert selectors.audit_head() == tuple(AuditHead.objects.values_list("position", "hash").get())
    assert _trail() == _orm_trail()
    audit_checkpoint_periodic()  # the signing key, a checkpoint and the chain status
    _record(3, start=5)
    audit_checkpoint_periodic()
    trail, orm = _trail(), _orm_trail()
    assert trail == orm and None not in orm
    assert trail[1]["checked_at"].tzinfo is not None and isinstance(trail[1]["ok"], bool)
    # A broken chain, a retired key: still the rows the ORM reads.
    chain_status_record(selectors.chain.ChainResult(verified=2, first_bad_position=3, reason="changed"), full=True)
    assert AuditChainStatus.objects.get(pk=1).ok is False
    AuditSigningKey.objects.update(retired_at=timezone.now())
    assert _trail() == _orm_trail()
    assert _trail()[3] is None


def test_trail_read_is_one_query():
    _record(3)
    audit_checkpoint_periodic()
    with CaptureQueriesContext(connection) as captured:
        selectors.audit_trail_read()
    assert len(captured.captured_queries) == 1


def test_recent_exports_are_the_newest_ten_with_their_shown_columns(make_user):
    user = make_user("exporter", Role.ADMINISTRATOR)
    _record(3)
    for i in range(12):
        export = audit_export_create(user=user, format=("csv", "jsonl", "pdf")[i % 3], filters={})
        AuditExport.objects.filter(pk=export.pk).update(created_at=timezone.now() - timedelta(minutes=i))
    ours = selectors.audit_recent_exports()
    theirs = list(AuditExport.objects.select_related("job")[:10])
    assert [e.pk for e in ours] == [e.pk for e in theirs]
    shown = lambda e: (e.pk, e.created_at, e.created_by_name, e.get_format_display(), e.expected_count,  # noqa: E731
                       e.state, e.get_state_display())
    assert [shown(e) for e in ours] == [shown(e) for e in theirs]


def _offset_page(number, per_page):
    """The page as Django's paginator gives it over the model queryset (OFFSET)."""
    paginator = Paginator(selectors.audit_event_list(), per_page)
    return paginator.get_page(number)


@pytest.mark.parametrize("number", [None, "1", "2", "3", "7", "8", "999", "last", "x", "-1"])
def test_unfiltered_pages_show_the_events_of_the_offset_pages(number):
    _record(37)
    head = selectors.audit_head()
    ours = selectors.audit_event_page({}, number, per_page=5, head=head)
    theirs = _offset_page(number, 5)
    assert (ours.number, ours.paginator.count, ours.paginator.num_pages) == (
        theirs.number, theirs.paginator.count, theirs.paginator.num_pages)
    expected = [tuple(getattr(e, f) for f in selectors.AuditRow._fields) for e in theirs.object_list]
    assert [tuple(row) for row in ours.object_list] == expected
    assert audit_rows(ours.object_list) == audit_rows(list(theirs.object_list))


def test_filtered_pages_show_the_matching_events():
    _record(30)
    ours = selectors.audit_event_page({"actor": "u3"}, "2", per_page=2, head=None)
    theirs = Paginator(selectors.audit_event_list(actor="u3"), 2).get_page("2")
    assert ours.paginator.count == theirs.paginator.count
    assert [row.position for row in ours.object_list] == [e.position for e in theirs.object_list]
    assert audit_rows(ours.object_list) == audit_rows(list(theirs.object_list))


def test_rows_below_convert_times_as_the_orm_does():
    _record(4)
    top = selectors.audit_head()[0]
    rows = selectors.audit_rows_below(top, 3)
    orm = list(AuditEvent.objects.filter(position__lte=top).order_by("-position")
               .values_list(*selectors.AuditRow._fields)[:3])
    assert [tuple(r) for r in rows] == orm
    assert all(r.time.tzinfo is not None for r in rows)
    assert selectors.audit_rows_below(0, 3) == []


# --- the filter form ------------------------------------------------------------------
class _DjangoFilterForm(AuditFilterForm):
    """The filter form with Django's own choice fields, as it was."""

    action = forms.ChoiceField(required=False, choices=AuditFilterForm.base_fields["action"].choices, widget=FlatSelect)
    outcome = forms.ChoiceField(required=False, choices=AuditFilterForm.base_fields["outcome"].choices, widget=FlatSelect)


@pytest.mark.parametrize("data", [None, {}, {"action": AuditAction.LOGIN_FAILED, "outcome": Outcome.FAILED, "actor": "a<b"},
                                  {"action": "no-such-action", "time_from": "2026-01-02T03:04"}])
def test_the_filter_form_renders_and_cleans_as_before(data):
    ours, theirs = AuditFilterForm(data), _DjangoFilterForm(data)
    assert [str(ours[name]) for name in ours.fields] == [str(theirs[name]) for name in theirs.fields]
    assert ours.filters() == theirs.filters()
    assert ours.errors == theirs.errors
    assert ours.fields["action"].choices == theirs.fields["action"].choices


def test_forms_share_their_fixed_choices_but_not_their_fields():
    one, two = AuditFilterForm(), AuditFilterForm()
    assert one.fields["action"] is not two.fields["action"]
    assert one.fields["action"].widget is not two.fields["action"].widget
    assert one.fields["action"].choices is two.fields["action"].choices
    one.fields["action"].widget.attrs["class"] = "changed"
    assert "class" not in two.fields["action"].widget.attrs
    assert str(ExportForm()["format"]) == str(ExportForm()["format"])


# --- the page -------------------------------------------------------------------------
def test_audit_page_output_and_its_queries(make_user, login_client):
    admin = make_user("page-admin", Role.ADMINISTRATOR)
    _record(60)
    audit_checkpoint_periodic()
    audit_export_create(user=admin, format="csv", filters={})
    client = login_client(admin)
    client.get(reverse("audit:list"))
    with CaptureQueriesContext(connection) as captured:
        response = client.get(reverse("audit:list"))
    page = response.context["page"]
    assert page.paginator.count == selectors.audit_head()[0]
    assert [row.position for row in page.object_list] == list(range(page.paginator.count, page.paginator.count - 50, -1))
    html = response.content.decode()
    assert f'<form method="get" action="{reverse("audit:list")}" hx-get="{reverse("audit:list")}"' in html
    assert f'<a href="{reverse("audit:list")}" role="button" class="secondary outline">Clear</a>' in html
    assert "Chain verified" in html and AuditSigningKey.objects.get().key_id in html
    assert reverse("audit:export_detail", args=[AuditExport.objects.get().pk]) in html
    audit_sql = [q["sql"] for q in captured.captured_queries if "audit_" in q["sql"]]
    assert len(audit_sql) == 3  # the trail (head, badge, key), the events, the exports
