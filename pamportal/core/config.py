"""The one reader of pamportal's settings: ``settings.<NAME>`` when Django's settings
define it, else the environment variable of the same name, else the default, always
typed, read at call time (so tests change values with pytest-django's ``settings``).
A value that cannot be read is an error that names the setting, never a silent default.
The app ``conf`` modules list their named settings on top of it."""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(ImproperlyConfigured):
    """A setting whose value cannot be read as its type."""


def _cast(name: str, value: Any, kind: Callable[[Any], T], source: str) -> T:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{name}={shown} ({source}) is not a yes/no value (1/0, true/false, yes/no, on/off)")
    if kind in (int, float):
        what = "a whole number" if kind is int else "a number"
        allowed = (str, int) if kind is int else (str, int, float)
        if isinstance(value, allowed) and not isinstance(value, bool):
            try:
                return kind(value.strip() if isinstance(value, str) else value)
            except ValueError:
                pass
        raise ConfigError(f"{name}={shown} ({source}) is not {what}")
    if kind is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        raise ConfigError(f"{name}={shown} ({source}) is not text")
    try:  # a parser of the setting's own (a list of servers, a port map)
        return kind(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}={shown} ({source}) cannot be read: {error}") from None


def env(name: str, default: T, kind: Callable[[Any], T] | None = None) -> T:
    """The environment variable ``name`` as ``kind`` (the default's type unless
    given), or ``default`` when it is unset or empty. For settings.py itself, which
    cannot ask Django's settings."""
    kind = kind or type(default)
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return _cast(name, raw, kind, "from the environment")


def setting(name: str, default: T, kind: Callable[[Any], T] | None = None) -> T:
    """``settings.<name>`` if defined, else ``env(name, default, kind)``; typed as
    ``kind`` (the default's type unless given: int, float, str or bool, or any parser
    that raises ValueError)."""
    kind = kind or type(default)
    if hasattr(settings, name):
        return _cast(name, getattr(settings, name), kind, "in settings")
    return env(name, default, kind)
