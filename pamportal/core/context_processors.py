from functools import cache

from django.conf import settings
from django.urls import reverse

from pamportal.accounts.roles import capabilities_of

# The header's links: URL names without arguments, so their paths never change while
# the process runs. Reversed once per process instead of twelve times per page.
NAV = {
    "dashboard": "nodes:dashboard", "cluster": "cluster:overview", "jobs": "jobs:list",
    "preflight": "preflight:list", "certificates": "nodes:certificates", "licence": "licensing:detail",
    "users": "accounts:user_list", "audit": "audit:list", "totp": "accounts:totp_enrol",
    "password": "accounts:password_change", "logout": "accounts:logout",
}


@cache
def nav_urls() -> dict[str, str]:
    return {key: reverse(name) for key, name in NAV.items()}


def portal(request):
    user = getattr(request, "user", None)
    capabilities = set()
    if user is not None and user.is_authenticated:
        capabilities = capabilities_of(user)
    return {
        "PAM_VERSION": settings.PAM_VERSION,
        "PAM_NODE_ADDRESS": settings.PAM_NODE_ADDRESS,
        "can": capabilities,
        "nav": nav_urls(),
    }
