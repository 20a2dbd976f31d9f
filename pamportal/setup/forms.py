"""Forms of the first-boot wizard."""

from __future__ import annotations

import ipaddress
import re

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


# --- after the administrator: node address, NTP, MEK ----------------------------------
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_NTP_SERVERS = 4


def parse_ip(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]") if text.startswith("[") else text)
    except ValueError:
        return None


def fqdn_problem(name: str) -> str:
    """Why ``name`` is not a fully qualified domain name ("" if it is one)."""
    if len(name) > 253:
        return "is longer than 253 characters"
    labels = name.rstrip(".").split(".")
    if len(labels) < 2:
        return "is not fully qualified (it needs a domain, like node1.example.com)"
    for label in labels:
        if not _LABEL.match(label):
            return (f"has a part “{label[:70]}” that is not a valid DNS label (letters, digits and hyphens, "
                    "1–63 characters, not starting or ending with a hyphen)")
    if labels[-1].isdigit():
        return "ends in a number, so it is neither a domain name nor an IP address"
    return ""


def validate_node_address(value: str) -> str:
    value = value.strip().lower()
    if not value:
        raise forms.ValidationError("Enter the node's address: a fully qualified domain name or an IP address.")
    if parse_ip(value) is not None:
        return str(parse_ip(value))
    if ":" in value or "/" in value:
        raise forms.ValidationError(f"“{value[:80]}” is not an IP address (and a host name cannot contain “:” or “/”).")
    problem = fqdn_problem(value)
    if problem:
        raise forms.ValidationError(f"“{value[:80]}” {problem}.")
    return value.rstrip(".")


def validate_ntp_server(entry: str) -> str:
    """A host name or IP, optionally with a port (``host:123``, ``[v6]:123``)."""
    entry = entry.strip().lower()
    host, port = entry, None
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0:
            raise forms.ValidationError(f"“{entry[:80]}”: missing “]” after an IPv6 address.")
        host, rest = entry[1:end], entry[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise forms.ValidationError(f"“{entry[:80]}” is not host or host:port.")
            port = rest[1:]
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise forms.ValidationError(f"“{entry[:80]}”: the port must be a number from 1 to 65535.")
    ip = parse_ip(host)
    if ip is None:
        if ":" in host:
            raise forms.ValidationError(f"“{entry[:80]}” is not an IP address; write an IPv6 address with a port as [address]:port.")
        labels = host.rstrip(".").split(".")
        if not host or len(host) > 253 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
            raise forms.ValidationError(f"“{entry[:80]}” is not a host name or an IP address.")
        host = host.rstrip(".")
    else:
        host = str(ip)
    if port is None:
        return host
    return f"[{host}]:{port}" if ip is not None and ip.version == 6 else f"{host}:{port}"


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
        help_text="1 to 4 host names or IP addresses, one a line or separated by commas (host:port for a non-standard port). Cluster nodes must agree on the time within 2 seconds.",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
    )

    def clean_address(self):
        return validate_node_address(self.cleaned_data["address"])

    def clean_ntp_servers(self):
        entries = [e for e in re.split(r"[\s,]+", self.cleaned_data["ntp_servers"]) if e]
        if not entries:
            raise forms.ValidationError("Enter at least one NTP server.")
        if len(entries) > MAX_NTP_SERVERS:
            raise forms.ValidationError(f"Enter at most {MAX_NTP_SERVERS} NTP servers ({len(entries)} given).")
        servers = [validate_ntp_server(e) for e in entries]
        if len(set(servers)) != len(servers):
            raise forms.ValidationError("The same NTP server is listed twice.")
        return servers


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
