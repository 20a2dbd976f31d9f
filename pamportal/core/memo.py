"""A value read at most once per ``seconds`` in each process, for reads every page makes
whose answer changes rarely (the approval policy's voting role, whether this node was
removed). The process that changes the value forgets it at once (the model's
``post_save``/``post_delete``, or ``forget()``); another process sees the change within
``seconds``. Keyed, so that an answer depends on what it was read for (the node's own
address on a shared database, for one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
_ALL: list[Memo] = []


def forget_all() -> None:
    """Every memo's value dropped (the tests, between one test's database and the next)."""
    for memo in list(_ALL):
        memo.forget()


class Memo(Generic[T]):
    def __init__(self, read: Callable[[], T], *, seconds: float, key: Callable[[], Hashable] = lambda: None):
        self._read, self._seconds, self._key = read, seconds, key
        self._lock = threading.Lock()
        self._value: tuple[float, Hashable, T] | None = None
        _ALL.append(self)

    def get(self) -> T:
        key, now = self._key(), time.monotonic()
        held = self._value
        if held is not None and held[1] == key and now - held[0] < self._seconds:
            return held[2]
        value = self._read()
        with self._lock:
            self._value = (now, key, value)
        return value

    def forget(self, *args, **kwargs) -> None:
        """Drop the value (usable as a signal receiver)."""
        with self._lock:
            self._value = None
