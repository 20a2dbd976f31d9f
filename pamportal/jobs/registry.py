"""Job kinds and their steps. Apps register kinds; the engine looks them up by name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from django.conf import settings


@dataclass(frozen=True)
class StepSpec:
    name: str
    title: str
    run: Callable  # run(ctx: StepContext) -> dict (the step's result)
    max_attempts: int = 1  # >1: the reaper re-queues the step after its worker died


@dataclass(frozen=True)
class JobKind:
    name: str
    title: str
    steps: tuple[StepSpec, ...] = field(default_factory=tuple)


_KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    _KINDS[kind.name] = kind
    return kind


def get(name: str) -> JobKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise LookupError(f"no job kind named {name!r}") from None


def all_kinds() -> dict[str, JobKind]:
    return dict(_KINDS)


def load_plugins() -> None:
    for module in ["pamportal.nodes.facts", *settings.PAM_JOB_PLUGINS]:
        importlib.import_module(module)
