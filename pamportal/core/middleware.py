"""Request id, source address and acting user, made available to the audit service;
no caching of pages shown to a logged-in user."""

from __future__ import annotations

from dataclasses import replace

from django.utils.cache import add_never_cache_headers

from pamportal.core import context


class RequestContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = context.new_request_id()
        token = context.set_for_request(
            context.ActorContext(
                actor_id=None,
                actor_name="anonymous",
                source_ip=request.META.get("REMOTE_ADDR", ""),
                request_id=request.request_id,
            )
        )
        try:
            response = self.get_response(request)
        finally:
            context.reset(token)
        response["X-Request-ID"] = request.request_id
        return response


class AuditActorMiddleware:
    """After authentication: the acting user becomes the audit actor."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            token = context.set_for_request(
                replace(context.current(), actor_id=user.pk, actor_name=user.get_username())
            )
            try:
                return self.get_response(request)
            finally:
                context.reset(token)
        return self.get_response(request)


class NeverCacheAuthenticatedMiddleware:
    """Every answer to a logged-in user (or one that logs a user in or out) is marked
    ``Cache-Control: no-store``, so no browser or proxy keeps a console page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        was_authenticated = bool(user is not None and user.is_authenticated)
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if was_authenticated or (user is not None and user.is_authenticated):
            add_never_cache_headers(response)
        return response
