"""Forms of the first-boot wizard."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.utils.html import format_html

from pamportal.accounts.forms import code_field
from pamportal.accounts.roles import Role
from pamportal.core import addresses


class TokenForm(forms.Form):
    token = forms.CharField(
        label="Setup token",
        max_length=200,
        help_text=format_html(
            "Printed at the node's console by <code>{}</code>; <code>{}</code> prints it again.",
            "make run", "manage.py setup_token",
        ),
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


# --- after the administrator: node address, NTP, MEK ----------------------------------
MAX_NTP_SERVERS = addresses.MAX_NTP_SERVERS


def validate_node_address(value: str) -> str:
    """The typed address in its one spelling, by the one node-address rule."""
    value = addresses.address_normalize(value)
    if not value:
        raise forms.ValidationError("Enter the node's address: a fully qualified domain name or an IP address.")
    problem = addresses.address_problem(value)
    if problem:
        raise forms.ValidationError(f"“{value[:80]}” {problem}.")
    return value


class NodeForm(forms.Form):
    address = forms.CharField(
        label="Node address",
        max_length=253,
        help_text="A fully qualified domain name (node1.example.com) or an IP address. Other nodes and browsers reach this node by it; it goes into the node's certificate.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "autofocus": True}),
    )
    ntp_servers = forms.CharField(
        label="NTP servers",
        max_length=1200,
        help_text=(
            "1 to 4 host names or IP addresses, one a line or separated by commas (host:port for a non-standard "
            "port). Cluster nodes must agree on the time within 2 seconds. On an isolated network, use the site's "
            "internal NTP servers or the hypervisor's (the host this virtual machine runs on); pool.ntp.org works "
            "only where outbound UDP port 123 to the internet is open."
        ),
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
    )

    def clean_address(self):
        return validate_node_address(self.cleaned_data["address"])

    def clean_ntp_servers(self):
        try:
            return addresses.ntp_servers_parse(self.cleaned_data["ntp_servers"])
        except ValueError as error:
            raise forms.ValidationError(str(error)) from None


# --- or: join an existing cluster as a follower ---------------------------------------
class JoinForm(forms.Form):
    bundle = forms.FileField(label="Joining bundle", help_text="The file generated on the leader for this node.")
    mek = forms.CharField(
        label="Master Encryption Key", strip=True, max_length=200,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="The cluster's MEK, as the leader's operator saved it (groups of four; dashes optional).",
    )
    own_address = forms.CharField(label="This node's address", max_length=253,
                                  help_text="FQDN or IP; the bundle names the address it was made for.")
