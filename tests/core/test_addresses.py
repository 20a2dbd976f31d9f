"""The one node-address rule and NTP-server parser. The three copies it replaced gave
different answers: the setup form took 0.0.0.0, preflight took [::1] (and a trailing
dot), the bundle took neither; each such case is pinned here."""

import pytest

from pamportal.core.addresses import address_normalize, address_problem, ntp_server_parse, ntp_servers_parse


@pytest.mark.parametrize("address", [
    "node1.example.com", "PAM-1.Example.org", "xn--bcher-kva.example", "10.0.0.5", "127.0.0.11", "::1",
    "2001:db8::5", "a" * 63 + ".example.com",
])
def test_fqdns_and_ip_literals_are_node_addresses(address):
    assert address_problem(address) == ""


@pytest.mark.parametrize("address,phrase", [
    # the divergent cases
    ("0.0.0.0", "is the wildcard address"),  # the setup form took it
    ("::", "is the wildcard address"),
    ("[::1]", "is written in brackets"),  # preflight took it
    ("[2001:db8::5]", "is written in brackets"),
    ("pam1.example.com.", "ends with a dot"),  # preflight took it
    ("ff02::1", "is a multicast address"),
    ("224.0.0.1", "is a multicast address"),
    # the common ones
    ("", "is empty"),
    ("   ", "has spaces in it"),
    (" node1.example.com", "has spaces in it"),
    ("node1", "is not fully qualified"),
    ("localhost", "is not fully qualified"),
    ("10.0.0.256", "looks like an IPv4 address but is not one"),
    ("10.0.0.256", "ends in a number"),
    ("1.2.3", "looks like an IPv4 address"),
    ("pam.example.123", "ends in a number"),
    ("fe80::1::2", "is not an IP address"),
    ("10.0.0.1:2390", "is not an IP address"),
    ("node_1.example.com", "not a valid DNS label"),
    ("-pam.example.com", "not a valid DNS label"),
    ("pam..example.com", "“(empty)” that is not a valid DNS label"),
    ("a" * 64 + ".example.com", "not a valid DNS label"),
    ("a." * 127 + "com", "is longer than 253 characters"),
])
def test_everything_else_is_refused_with_its_reason(address, phrase):
    assert phrase in address_problem(address)


@pytest.mark.parametrize("typed,spelled", [
    (" Node1.Example.COM ", "node1.example.com"),
    ("node1.example.com.", "node1.example.com"),
    ("2001:DB8:0::5", "2001:db8::5"),
    ("[::1]", "[::1]"),  # brackets are refused, never guessed away
])
def test_normalize_gives_the_one_spelling(typed, spelled):
    assert address_normalize(typed) == spelled


def test_ntp_servers_parse_gives_one_to_four_distinct_servers():
    assert ntp_servers_parse("0.pool.ntp.org\n192.0.2.7, [2001:DB8::1]:123,127.0.0.1:9123") == [
        "0.pool.ntp.org", "192.0.2.7", "[2001:db8::1]:123", "127.0.0.1:9123"]
    assert ntp_servers_parse("2001:db8::1") == ["2001:db8::1"]
    assert ntp_servers_parse("[2001:db8::1]") == ["2001:db8::1"]
    assert ntp_servers_parse("Pool.NTP.org.") == ["pool.ntp.org"]


@pytest.mark.parametrize("text,message", [
    ("", "at least one"),
    (" , \n", "at least one"),
    ("a.example.com b.example.com c.example.com d.example.com e.example.com", "at most 4"),
    ("pool.ntp.org, POOL.ntp.org", "listed twice"),
    ("ntp.example.com:99999", "port must be a number"),
    ("ntp.example.com:", "port must be a number"),
    ("[2001:db8::1", "missing “]”"),
    ("[2001:db8::1]123", "is not host or host:port"),
    ("[10.0.0.1]:123", "only an IPv6 address"),
    ("bad_host!", "not a host name or an IP address"),
    ("0.0.0.0", "is the wildcard address"),
    ("ntp", "is not fully qualified"),
])
def test_ntp_servers_parse_refuses_with_a_message(text, message):
    with pytest.raises(ValueError) as caught:
        ntp_servers_parse(text)
    assert message in str(caught.value)


def test_one_ntp_server_keeps_its_port():
    assert ntp_server_parse("ntp.example.com:123") == "ntp.example.com:123"
