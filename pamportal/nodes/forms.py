"""Forms of the node pages (the MEK form serves the setup wizard too)."""

from __future__ import annotations

from django import forms


class MekForm(forms.Form):
    """The operator types the MEK back. Never re-rendered with what was typed."""

    mek = forms.CharField(
        label="Master Encryption Key",
        max_length=200,
        strip=True,
        error_messages={"required": "Type the Master Encryption Key from your copy."},
        help_text="14 groups of 4 characters; spaces, dashes and case do not matter.",
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "characters", "class": "mek-input"}
        ),
    )
