"""Request id, source address and acting user, made available to the audit service."""

from __future__ import annotations

from dataclasses import replace

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
