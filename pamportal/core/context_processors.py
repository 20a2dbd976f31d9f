from django.conf import settings

from pamportal.accounts.roles import capabilities_of


def portal(request):
    user = getattr(request, "user", None)
    capabilities = set()
    if user is not None and user.is_authenticated:
        capabilities = capabilities_of(user)
    return {
        "PAM_VERSION": settings.PAM_VERSION,
        "PAM_NODE_ADDRESS": settings.PAM_NODE_ADDRESS,
        "can": capabilities,
    }
