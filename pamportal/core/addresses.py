"""The one rule for a node address and for the NTP servers a node keeps time with
(no Django here): the setup form, preflight and the joining bundle all ask this module.

A node address is an FQDN (at least two dot-separated DNS labels, no trailing dot) or
an IP literal written without brackets; never the wildcard address (0.0.0.0, ::) nor a
multicast one, since other nodes must reach this node by it. Loopback is allowed (the
multi-node tests run on loopback addresses). ``address_problem`` judges text exactly
as given; ``address_normalize`` turns what an operator typed into the one spelling
(it never removes brackets: ``[::1]`` is refused, not guessed at).
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)
MAX_NAME = 253
MAX_NTP_SERVERS = 4
LABEL_RULE = "letters, digits and hyphens, 1–63 characters, not starting or ending with a hyphen"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def address_normalize(text: str) -> str:
    """``text`` in its one spelling: no surrounding spaces, an IP as ``ipaddress``
    writes it, a name in lower case without a trailing dot. Check the result with
    ``address_problem``."""
    text = text.strip()
    ip = _ip(text)
    if ip is not None:
        return str(ip)
    text = text.lower()
    return text[:-1] if text.endswith(".") and not text.endswith("..") else text


def address_problem(text: str) -> str:
    """Why ``text`` is not a node address, as a phrase to follow the address ("is
    empty", "is the wildcard address ..."); "" when it is one."""
    if not text:
        return "is empty"
    if text != text.strip() or any(char.isspace() for char in text):
        return "has spaces in it"
    ip = _ip(text)
    if ip is not None:
        if ip.is_unspecified:
            return "is the wildcard address; give the address other nodes use to reach this node"
        if ip.is_multicast:
            return "is a multicast address"
        return ""
    if text.startswith("[") and text.endswith("]") and _ip(text[1:-1]) is not None:
        return f"is written in brackets; write the IP address without them ({text[1:-1][:80]})"
    if ":" in text or "/" in text:
        return "is not an IP address (and a host name cannot contain “:” or “/”)"
    if len(text) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if text.endswith(".") and not text.endswith(".."):
        return "ends with a dot; write the name without it"
    labels = text.split(".")
    if all(label.isdigit() for label in labels):
        return "looks like an IPv4 address but is not one (and a name that ends in a number is not a host name)"
    bad = next((label for label in labels if not _LABEL.fullmatch(label)), None)
    if bad is not None:
        return f"has a part “{bad[:70] or '(empty)'}” that is not a valid DNS label ({LABEL_RULE})"
    if len(labels) < 2:
        return "is not fully qualified (it needs a domain, like node1.example.com)"
    if labels[-1].isdigit():
        return "ends in a number, so it is neither a domain name nor an IP address"
    return ""


def ntp_server_parse(entry: str) -> str:
    """One NTP server in its one spelling: ``host``, ``host:port`` or ``[v6]:port``,
    where host follows the node-address rule. Raises ValueError with the message."""
    entry = entry.strip().lower()
    shown = entry[:80]
    host, port = entry, None
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0:
            raise ValueError(f"“{shown}”: missing “]” after an IPv6 address.")
        host, rest = entry[1:end], entry[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"“{shown}” is not host or host:port.")
            port = rest[1:]
        if _ip(host) is None or _ip(host).version != 6:
            raise ValueError(f"“{shown}”: only an IPv6 address is written in brackets.")
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"“{shown}”: the port must be a number from 1 to 65535.")
    ip = _ip(host)
    if ip is None and ":" in host:
        raise ValueError(f"“{shown}” is not an IP address; write an IPv6 address with a port as [address]:port.")
    host = address_normalize(host)
    problem = address_problem(host)
    if problem:
        raise ValueError(f"“{shown}” is not a host name or an IP address: it {problem}.")
    if port is None:
        return host
    return f"[{host}]:{port}" if ip is not None and ip.version == 6 else f"{host}:{port}"


def ntp_servers_parse(text: str) -> list[str]:
    """1 to MAX_NTP_SERVERS distinct servers, separated by commas, spaces or lines, each
    in its one spelling (``ntp_server_parse``). Raises ValueError with the message."""
    entries = [entry for entry in re.split(r"[\s,]+", text) if entry]
    if not entries:
        raise ValueError("Enter at least one NTP server.")
    if len(entries) > MAX_NTP_SERVERS:
        raise ValueError(f"Enter at most {MAX_NTP_SERVERS} NTP servers ({len(entries)} given).")
    servers = [ntp_server_parse(entry) for entry in entries]
    if len(set(servers)) != len(servers):
        raise ValueError("The same NTP server is listed twice.")
    return servers
