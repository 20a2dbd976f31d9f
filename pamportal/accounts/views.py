"""Placeholder views; the accounts work replaces this module."""

from django.http import HttpResponse


def locked_out(request, credentials=None, *args, **kwargs):
    return HttpResponse("Locked out", status=403)


def placeholder(request, *args, **kwargs):
    return HttpResponse("not yet")
