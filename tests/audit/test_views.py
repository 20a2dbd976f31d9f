"""The administrators' audit pages: who may see them, filters, paging, the htmx
partial, and a query count that does not grow with the rows shown."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.services import audit_record
from pamportal.core.context import acting

pytestmark = pytest.mark.django_db


def record(n: int, *, actor: str = "alice", action=AuditAction.LOGIN_SUCCEEDED, outcome=Outcome.SUCCEEDED):
    with acting(actor_id=None, actor_name=actor, source_ip="192.0.2.1"):
        for i in range(n):
            audit_record(action=action, outcome=outcome, target=f"user:{actor}-{i}")


@pytest.fixture
def admin_client(admin_user, login_client):
    return login_client(admin_user)


@pytest.mark.parametrize("url_name,args", [("audit:list", ()), ("audit:detail", (1,))])
@pytest.mark.parametrize(
    "role,expected",
    [(None, 302), (Role.VIEWER, 403), (Role.OPERATOR, 403), (Role.APPROVER, 403), (Role.ADMINISTRATOR, 200)],
)
def test_role_matrix(client, make_user, login_client, admin_user, url_name, args, role, expected):
    record(1)
    if role is not None:
        login_client(make_user(f"someone-{role}", role), client)
    response = client.get(reverse(url_name, args=args))
    assert response.status_code == expected
    if role is None:
        assert reverse("accounts:login") in response["Location"]


def test_list_shows_events_newest_first_and_marks_denials(admin_client):
    record(2, actor="carol")
    record(1, actor="mallory", action=AuditAction.ACCESS_DENIED, outcome=Outcome.DENIED)
    response = admin_client.get(reverse("audit:list"))
    html = response.content.decode()
    assert response.templates[0].name == "audit/list.html"
    assert html.index("user:mallory-0") < html.index("user:carol-1") < html.index("user:carol-0")
    assert 'class="outcome-denied"' in html
    assert "style=" not in html and "<script>" not in html


@pytest.mark.parametrize(
    "query,shown,hidden",
    [
        ({"actor": "caro"}, "user:carol-0", "user:dave-0"),
        ({"action": AuditAction.ACCESS_DENIED.value}, "user:dave-0", "user:carol-0"),
        ({"outcome": Outcome.DENIED.value}, "user:dave-0", "user:carol-0"),
    ],
)
def test_filters(admin_client, query, shown, hidden):
    record(1, actor="carol")
    record(1, actor="dave", action=AuditAction.ACCESS_DENIED, outcome=Outcome.DENIED)
    html = admin_client.get(reverse("audit:list"), query).content.decode()
    assert shown in html and hidden not in html


def test_time_filter(admin_client):
    record(1, actor="carol")
    future = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    past = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert "user:carol-0" not in admin_client.get(reverse("audit:list"), {"time_from": future}).content.decode()
    assert "user:carol-0" in admin_client.get(reverse("audit:list"), {"time_from": past, "time_to": future}).content.decode()
    assert "user:carol-0" not in admin_client.get(reverse("audit:list"), {"time_to": past}).content.decode()


def test_bad_filter_is_reported_not_fatal(admin_client):
    record(1, actor="carol")
    response = admin_client.get(reverse("audit:list"), {"time_from": "not a date", "outcome": "exploded"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "Enter a valid date/time" in html and "Select a valid choice" in html
    assert "user:carol-0" in html


def test_htmx_request_gets_the_table_partial_and_pages_keep_filters(admin_client):
    record(120, actor="carol")
    record(1, actor="dave")
    response = admin_client.get(reverse("audit:list"), {"actor": "carol", "page": 2}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert [t.name for t in response.templates][0] == "audit/_table.html"
    assert "<html" not in html
    assert "120 events" in html and "page 2 of 3" in html
    assert "user:carol-69" in html and "user:carol-70" not in html  # newest first, 50 a page
    assert 'hx-get="?actor=carol&amp;page=3"' in html and 'hx-push-url="true"' in html


def test_list_query_count_does_not_grow_with_rows(admin_client, django_assert_max_num_queries):
    record(5)
    # 10 for the page itself, 5 for the chain badge, head, latest checkpoint, signing
    # key and recent exports: all constant.
    with django_assert_max_num_queries(16) as few:
        admin_client.get(reverse("audit:list"))
    record(200)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = admin_client.get(reverse("audit:list"))
    assert response.content.decode().count('<td><a href="/audit/') == 50


def test_detail_shows_the_event_and_checks_its_hash(admin_client):
    record(3, actor="carol")
    response = admin_client.get(reverse("audit:detail", args=[2]))
    html = response.content.decode()
    assert "user:carol-1" in html and "matches its content" in html
    assert reverse("audit:detail", args=[1]) in html and reverse("audit:detail", args=[3]) in html


def test_detail_of_a_missing_event_is_404(admin_client):
    assert admin_client.get(reverse("audit:detail", args=[999])).status_code == 404


def test_rows_escape_every_value_and_link_each_event(admin_client):
    hostile = '<script>alert("x")</script>&"\''
    with acting(actor_id=None, actor_name=hostile, source_ip="192.0.2.9"):
        audit_record(action=AuditAction.LOGIN_FAILED, outcome=Outcome.DENIED, target=hostile)
    html = admin_client.get(reverse("audit:list"), {"outcome": Outcome.DENIED}).content.decode()
    assert "<script>alert" not in html
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&quot;&#x27;"
    assert html.count(escaped) == 2  # actor and target
    from pamportal.audit.models import AuditEvent

    event = AuditEvent.objects.get(actor_name=hostile)
    when = timezone.localtime(event.time).strftime("%Y-%m-%d %H:%M:%S")
    row = (f'<tr><td><a href="{reverse("audit:detail", args=[event.position])}">{event.position}</a></td>'
           f"<td>{when}</td><td>{escaped}</td><td>192.0.2.9</td><td>{event.get_action_display()}</td>"
           f'<td>{escaped}</td><td><span class="outcome-denied">{event.get_outcome_display()}</span></td></tr>')
    assert row in html


@pytest.mark.parametrize("value", [None, "", "auth.login", "no.such.action", ["auth.login"], 'x"><b>'])
def test_the_flat_select_renders_exactly_what_djangos_select_template_renders(value):
    from django import forms

    from pamportal.audit.forms import AuditFilterForm, FlatSelect

    choices = AuditFilterForm.base_fields["action"].choices
    choices = [*choices, ('x"><b>', 'label <i>"quoted"</i>')]
    attrs = {"id": "id_action", "required": True, "data-x": 'a"b'}
    for _ in range(2):  # the second time from the cached option markup
        assert FlatSelect(choices=choices).render("action", value, attrs) == \
            forms.Select(choices=choices).render("action", value, attrs)


@pytest.mark.parametrize("data", [{}, {"actor": 'x"><script>', "target": "user:a&b", "time_from": "2026-01-02T03:04",
                                       "time_to": "not a time"}, {"actor": "", "time_from": "2026-01-02"}])
def test_the_flat_inputs_render_exactly_what_djangos_input_template_renders(data):
    from django import forms

    from pamportal.audit.forms import AuditFilterForm, FlatDateTimeInput, FlatTextInput

    form = AuditFilterForm(data or None)
    for name in ("actor", "target", "time_from", "time_to"):
        bound = form[name]
        widget = bound.field.widget
        assert isinstance(widget, (FlatTextInput, FlatDateTimeInput))
        django_widget = (forms.TextInput if isinstance(widget, FlatTextInput) else forms.DateTimeInput)(
            attrs={**widget.attrs, "type": widget.input_type}, **({"format": widget.format} if isinstance(widget, FlatDateTimeInput) else {}))
        attrs = bound.build_widget_attrs({"id": bound.auto_id})
        value = bound.value()
        assert widget.render(bound.html_name, value, attrs) == django_widget.render(bound.html_name, value, attrs)
        assert str(bound) == bound.as_widget(widget=django_widget)
