"""The licence banner on every page of a signed-in user: from 30 days before the
licence expires, and whenever there is no valid licence."""

from __future__ import annotations

from dataclasses import dataclass

from pamportal.nodes.selectors import node_setup_due

from .selectors import licence_status_for


@dataclass(frozen=True)
class LicenceBanner:
    level: str  # "warning" or "error", as in the message CSS classes
    title: str
    detail: str


def banner_for(status) -> LicenceBanner | None:
    if not status.ok:
        return LicenceBanner("error", "No valid licence", status.message)
    if status.expiring_soon:
        days = status.days_left
        return LicenceBanner("warning", f"Licence expires in {days} day{'s' if days != 1 else ''}", status.message)
    return None


# Setup steps before the licence step: no licence is expected yet, so no banner.
BEFORE_LICENCE_STEP = frozenset({"node", "preflight"})


def licence_banner(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"licence_banner": None}
    banner = banner_for(licence_status_for(request))
    if banner is not None and banner.level == "error":
        if node_setup_due() in BEFORE_LICENCE_STEP:
            return {"licence_banner": None}
    return {"licence_banner": banner}
