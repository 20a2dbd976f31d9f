"""Who is acting, from where, in which request: read by the audit service.

Set per request by middleware and per task by the job engine, so services do not need
the request passed down to record who did something.
"""

from __future__ import annotations

import contextvars
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ActorContext:
    actor_id: int | None = None
    actor_name: str = "system"
    source_ip: str = ""
    request_id: str = ""


_current: contextvars.ContextVar[ActorContext] = contextvars.ContextVar(
    "pamportal_actor", default=ActorContext()
)


def current() -> ActorContext:
    return _current.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


@contextmanager
def acting(**changes):
    """Run a block with some fields of the actor context changed."""
    token = _current.set(replace(_current.get(), **changes))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def set_for_request(ctx: ActorContext):
    return _current.set(ctx)


def reset(token) -> None:
    _current.reset(token)
