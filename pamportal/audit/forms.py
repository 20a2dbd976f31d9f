"""The audit page's filters."""

from __future__ import annotations

import copy
import ipaddress
import re
from functools import lru_cache

from cryptography import x509
from django import forms
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from .actions import AuditAction, Outcome

_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)


def siem_host(text: str) -> str | None:
    """``text`` as a collector host in its one spelling: an IP address (IPv6 with or
    without brackets) or an RFC 1123 host name in lower case; None for anything else."""
    host = (text or "").strip()
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if any(not _HOST_LABEL.fullmatch(label) for label in labels):
        return None
    if labels[-1].isdigit():  # 1.2.3 or 999.1.1.1: a mistyped address, not a name
        return None
    return name.lower()

def _html_attrs(attrs: dict) -> str:
    """Django's widgets/attrs.html, in Python."""
    return "".join(
        format_html(" {}", name) if value is True else format_html(' {}="{}"', name, str(value))
        for name, value in attrs.items()
        if value is not False
    )


class FlatSelect(forms.Select):
    """A select without option groups, rendered in Python to the very markup of Django's
    select templates: the action filter has some ninety options, and the templates'
    include per option was a large part of the audit page's cost. Each option's markup
    (selected and not) is built once per list of choices and reused.

    Its copy in each form shares the list of choices (see ``FixedChoiceField``); Django's
    Select copies and re-normalises it."""

    def __deepcopy__(self, memo):
        widget = copy.copy(self)
        widget.attrs = self.attrs.copy()
        memo[id(self)] = widget
        return widget

    def render(self, name, value, attrs=None, renderer=None):
        choices = tuple((str(v), str(label)) for v, label in self.choices if not isinstance(label, (list, tuple)))
        if len(choices) != len(self.choices):  # option groups: Django's own templates
            return super().render(name, value, attrs, renderer)
        widget = forms.Widget.get_context(self, name, value, attrs)["widget"]
        selected = set(self.format_value(value))
        parts = [format_html('<select name="{}"', widget["name"]), _html_attrs(widget["attrs"]), ">"]
        chosen = False
        for option_value, plain, with_selected in _option_markup(choices):
            take = option_value in selected and (self.allow_multiple_selected or not chosen)
            chosen = chosen or take
            parts.append(with_selected if take else plain)
        parts.append("\n</select>")
        return mark_safe("".join(parts))


class _FlatInput:
    """An input rendered in Python to the very markup of Django's input template
    (``django/forms/widgets/input.html``): the audit page shows six of them."""

    def render(self, name, value, attrs=None, renderer=None):
        widget = self.get_context(name, value, attrs)["widget"]
        value_part = "" if widget["value"] is None else format_html(' value="{}"', str(widget["value"]))
        return mark_safe(format_html('<input type="{}" name="{}"', widget["type"], widget["name"])
                         + value_part + _html_attrs(widget["attrs"]) + ">")


class FlatTextInput(_FlatInput, forms.TextInput):
    pass


class FlatDateTimeInput(_FlatInput, forms.DateTimeInput):
    pass


@lru_cache(maxsize=32)
def _option_markup(choices: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str, str], ...]:
    return tuple(
        (value, format_html('\n  <option value="{}">{}</option>\n', value, label),
         format_html('\n  <option value="{}" selected>{}</option>\n', value, label))
        for value, label in choices
    )


class FixedChoiceField(forms.ChoiceField):
    """A choice field whose choices are set once, in the form's class, and never
    changed: each form instance shares them instead of copying them. Django's copy
    re-normalised the ninety actions twice for every form made, a tenth of a
    millisecond on each view of the audit page."""

    def __deepcopy__(self, memo):
        field = forms.Field.__deepcopy__(self, memo)
        field._choices = self._choices
        return field


_ANY = [("", "Any")]
_LOCAL_TIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=150, label="Actor", widget=FlatTextInput)
    action = FixedChoiceField(required=False, choices=_ANY + AuditAction.choices, widget=FlatSelect)
    outcome = FixedChoiceField(required=False, choices=_ANY + Outcome.choices, widget=FlatSelect)
    target = forms.CharField(required=False, max_length=512, label="Target", widget=FlatTextInput)
    time_from = forms.DateTimeField(
        required=False, label="From", input_formats=_LOCAL_TIME_FORMATS,
        widget=FlatDateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    time_to = forms.DateTimeField(
        required=False, label="To", input_formats=_LOCAL_TIME_FORMATS,
        widget=FlatDateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )

    def clean(self):
        data = super().clean()
        start, end = data.get("time_from"), data.get("time_to")
        if start and end and start > end:
            raise forms.ValidationError("“From” must not be later than “To”.")
        return data

    def filters(self) -> dict:
        """The valid filters only: a bad field is reported and ignored, not fatal."""
        if not self.is_bound:
            return {}
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        if self.non_field_errors():
            data = {k: v for k, v in data.items() if k not in ("time_from", "time_to")}
        return {k: v for k, v in data.items() if v not in (None, "")}


class ExportForm(forms.Form):
    format = FixedChoiceField(choices=[("csv", "CSV"), ("jsonl", "JSON Lines"), ("pdf", "PDF report")],
                               widget=FlatSelect)


class SiemForm(forms.Form):
    host = forms.CharField(max_length=253, label="Collector host")
    port = forms.IntegerField(min_value=1, max_value=65535, initial=6514, label="Port")
    ca_pem = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}), max_length=64_000,
        label="CA certificate to trust (PEM)",
        help_text="The collector's certificate must chain to it and name the host.",
    )
    enabled = forms.BooleanField(required=False, label="Forward events")

    def clean_host(self):
        host = siem_host(self.cleaned_data["host"])
        if host is None:
            raise forms.ValidationError(
                "Enter a host name (letters, digits and inner hyphens, dot-separated) or an IP address."
            )
        return host

    def clean_ca_pem(self):
        pem = self.cleaned_data["ca_pem"].strip() + "\n"
        try:
            certificates = x509.load_pem_x509_certificates(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise forms.ValidationError("This is not a PEM certificate.") from None
        if not certificates:
            raise forms.ValidationError("This is not a PEM certificate.")
        return pem
