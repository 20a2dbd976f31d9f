"""The SIEM collector host is a host name (RFC 1123) or an IP address, nothing else:
markup, spaces, URLs, ports and user info are refused by the form."""

from __future__ import annotations

import pytest

from pamportal.audit.forms import SiemForm, siem_host


@pytest.mark.parametrize("text, expected", [
    ("siem.example.com", "siem.example.com"),
    ("SIEM-1.Example.COM.", "siem-1.example.com"),
    ("collector", "collector"),
    ("192.0.2.10", "192.0.2.10"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
])
def test_host_names_and_addresses_are_accepted(text, expected):
    assert siem_host(text) == expected


@pytest.mark.parametrize("text", [
    'x"><b>', "<script>alert(1)</script>", "siem example.com", "https://siem.example.com", "siem.example.com:6514",
    "user@siem.example.com", "-siem.example.com", "siem-.example.com", "siem..example.com", "a" * 64 + ".com",
    "999.1.1.1", "1.2.3", "sïem.example.com", "siem_1.example.com", "", ".", "siem.example.com/x", "a\x00b",
])
def test_anything_else_is_refused(text):
    assert siem_host(text) is None
    form = SiemForm(data={"host": text, "port": 6514, "ca_pem": "x", "enabled": ""})
    assert not form.is_valid() and "host" in form.errors
