"""Forms of the first-boot wizard."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.validators import UnicodeUsernameValidator

from pamportal.accounts.forms import code_field
from pamportal.accounts.roles import Role


class TokenForm(forms.Form):
    token = forms.CharField(
        label="Setup token",
        max_length=200,
        help_text="Printed at the node's console by `make run`; `manage.py setup_token` prints it again.",
        error_messages={"required": "Enter the setup token printed at the console."},
        widget=forms.TextInput(attrs={"autocomplete": "off", "autofocus": True, "spellcheck": "false"}),
    )


class AdministratorForm(forms.Form):
    username = forms.CharField(
        max_length=150, validators=[UnicodeUsernameValidator()], help_text="Letters, digits and @ . + - _ only."
    )
    password1 = forms.CharField(
        label="Password", max_length=4096, strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )
    password2 = forms.CharField(
        label="Password again",
        max_length=4096,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["password1"].help_text = password_validation.password_validators_help_text_html()

    def clean_username(self):
        username = self.cleaned_data["username"]
        if get_user_model().objects.filter(username__iexact=username).exists():
            raise forms.ValidationError(f"A user named “{username}” already exists; choose another name.")
        return username

    def clean(self):
        cleaned = super().clean()
        first, second = cleaned.get("password1"), cleaned.get("password2")
        if first and second and first != second:
            self.add_error("password2", "The two passwords are not the same.")
        elif first:
            user = get_user_model()(username=cleaned.get("username") or "", role=Role.ADMINISTRATOR)
            try:
                password_validation.validate_password(first, user)
            except forms.ValidationError as error:
                self.add_error("password1", error)
        return cleaned


class SetupCodeForm(forms.Form):
    otp_token = code_field(required=True)
