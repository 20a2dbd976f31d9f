"""The audit page's filters."""

from __future__ import annotations

from django import forms

from .actions import AuditAction, Outcome

_ANY = [("", "Any")]
_LOCAL_TIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=150, label="Actor")
    action = forms.ChoiceField(required=False, choices=_ANY + AuditAction.choices)
    outcome = forms.ChoiceField(required=False, choices=_ANY + Outcome.choices)
    time_from = forms.DateTimeField(
        required=False, label="From", input_formats=_LOCAL_TIME_FORMATS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    time_to = forms.DateTimeField(
        required=False, label="To", input_formats=_LOCAL_TIME_FORMATS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
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
