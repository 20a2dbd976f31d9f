"""The two questions views ask about htmx, each answered in one place: does this request
want only the partial, and how does a polled partial tell htmx to stop polling."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django_htmx.http import HttpResponseStopPolling


def htmx_partial(request: HttpRequest) -> bool:
    """True for an htmx request that swaps part of a page; a boosted navigation (and a
    plain page load) wants the whole page."""
    return bool(request.htmx) and not request.htmx.boosted


def stop_polling(response: HttpResponse) -> HttpResponseStopPolling:
    """The same content and headers answered with htmx's 286, which ends the polling."""
    return HttpResponseStopPolling(response.content, headers=response.headers)
