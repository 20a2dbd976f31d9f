"""Forms of the cluster pages. They parse input; the services decide."""

from __future__ import annotations

from django import forms

from pamportal.accounts.roles import Role

from .models import Decision


class BundleForm(forms.Form):
    follower_address = forms.CharField(
        label="Follower address", max_length=253,
        help_text="The FQDN or IP address the new node was given in its setup; the bundle works only there.",
    )


class VoteForm(forms.Form):
    decision = forms.ChoiceField(choices=Decision.choices, widget=forms.RadioSelect)
    totp_code = forms.CharField(label="6-digit code", max_length=8,
                                widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}))


class PolicyForm(forms.Form):
    required_approvals = forms.IntegerField(label="Approvals needed", min_value=1, max_value=10)
    approver_role = forms.ChoiceField(
        label="Who approves", choices=[(Role.APPROVER.value, Role.APPROVER.label),
                                       (Role.ADMINISTRATOR.value, Role.ADMINISTRATOR.label)])
    request_lifetime_hours = forms.IntegerField(label="A request expires after (hours)", min_value=1,
                                                max_value=24 * 14)


class RemovalForm(forms.Form):
    reason = forms.CharField(label="Reason", min_length=10, max_length=500)


class WipeForm(forms.Form):
    """The typed confirmation of a removed node's wipe (the service checks what was typed)."""

    confirmation = forms.CharField(label="Type this node's address to confirm", max_length=253,
                                   widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}))


class LeadershipForm(forms.Form):
    reason = forms.CharField(label="Reason", min_length=10, max_length=500)


class FailoverModeForm(forms.Form):
    automatic = forms.TypedChoiceField(
        label="Automatic failover", coerce=lambda value: value == "on",
        choices=[("on", "On: Patroni elects a new leader when the leader is lost"),
                 ("off", "Off: manual only, a new leader only through an approved request")])
