"""Forms of the account pages. They parse and validate input; services change state."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.validators import UnicodeUsernameValidator

from .roles import Role


def code_field(required: bool) -> forms.RegexField:
    field = forms.RegexField(
        regex=r"^\s*\d{6}\s*$",
        required=required,
        label="6-digit code",
        strip=True,
        error_messages={
            "invalid": "The code is the 6 digits your authenticator app shows.",
            "required": "Enter the 6-digit code your authenticator app shows.",
        },
        widget=forms.TextInput(
            attrs={"inputmode": "numeric", "autocomplete": "one-time-code", "maxlength": 6, "pattern": r"\d{6}"}
        ),
    )
    return field


class LoginForm(forms.Form):
    username = forms.CharField(max_length=150, widget=forms.TextInput(attrs={"autocomplete": "username", "autofocus": True}))
    password = forms.CharField(max_length=4096, strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))
    otp_token = code_field(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["otp_token"].help_text = "Leave empty if you have not enrolled an authenticator app yet."


class CodeForm(forms.Form):
    otp_token = code_field(required=True)


class _NewPasswordMixin:
    """Two new-password fields checked against each other and Django's validators."""

    def _clean_new_password(self, user) -> None:
        first = self.cleaned_data.get("new_password1")
        second = self.cleaned_data.get("new_password2")
        if first and second and first != second:
            self.add_error("new_password2", "The two passwords are not the same.")
            return
        if first:
            try:
                password_validation.validate_password(first, user)
            except forms.ValidationError as error:
                self.add_error("new_password1", error)


def _password_field(label: str, autocomplete: str = "new-password") -> forms.CharField:
    return forms.CharField(
        label=label, max_length=4096, strip=False, widget=forms.PasswordInput(attrs={"autocomplete": autocomplete})
    )


class PasswordChangeForm(_NewPasswordMixin, forms.Form):
    old_password = _password_field("Current password", "current-password")
    new_password1 = _password_field("New password")
    new_password2 = _password_field("New password again")

    def __init__(self, user, *args, **kwargs):
        self.user = user
        super().__init__(*args, **kwargs)
        self.fields["new_password1"].help_text = password_validation.password_validators_help_text_html()

    def clean(self):
        cleaned = super().clean()
        old = cleaned.get("old_password")
        if old is not None and not self.user.check_password(old):
            self.add_error("old_password", "Your current password is not correct.")
        new = cleaned.get("new_password1")
        if old and new and old == new:
            self.add_error("new_password1", "Choose a password different from the current one.")
        self._clean_new_password(self.user)
        return cleaned


class UserCreateForm(_NewPasswordMixin, forms.Form):
    username = forms.CharField(
        max_length=150,
        validators=[UnicodeUsernameValidator()],
        help_text="Letters, digits and @ . + - _ only.",
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)
    new_password1 = _password_field("Initial password")
    new_password2 = _password_field("Initial password again")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["new_password1"].help_text = (
            "The user must change it at first login. " + password_validation.password_validators_help_text_html()
        )

    def clean_username(self):
        username = self.cleaned_data["username"]
        if get_user_model().objects.filter(username__iexact=username).exists():
            raise forms.ValidationError(f"A user named “{username}” already exists.")
        return username

    def clean(self):
        cleaned = super().clean()
        role = cleaned.get("role") or Role.VIEWER
        self._clean_new_password(get_user_model()(username=cleaned.get("username") or "", role=role))
        return cleaned
