"""Job kinds and their steps. Apps register kinds (from their ``AppConfig.ready``);
the engine looks them up by name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from django.conf import settings

if TYPE_CHECKING:  # the engine imports this module; the type only is needed here
    from .engine import StepContext


class StepRun(Protocol):
    """What a step does: ``run(ctx)`` returns the step's result (a JSON-able dict)."""

    def __call__(self, ctx: StepContext) -> dict[str, Any] | None: ...


# Called in the worker's own thread, inside the transaction that marks a step of a
# parallel group succeeded (job and step rows locked): where a step's result is stored.
StepRecord = Callable[["StepContext", dict[str, Any]], None]


@dataclass(frozen=True)
class StepSpec:
    name: str
    title: str
    run: StepRun
    max_attempts: int = 1  # >1: the reaper re-queues the step after its worker died
    # Consecutive steps with the same non-empty group run at once, each in a thread of
    # the worker that claimed them all (see ``engine.job_execute``). A step in a group
    # must not use the database from its thread unless ``in_worker_thread`` is set;
    # ``ctx.log`` is fine (the worker's thread writes the lines).
    group: str = ""
    in_worker_thread: bool = False  # a group step that uses the database: run in the worker's thread
    record: StepRecord | None = None


DEFAULT_VIEW_CAPABILITY = "jobs.view"

# Where a job of a kind runs once the database is the cluster's, shared by every node:
# NODE on the node whose console or worker created it (its params then carry
# ``node_address``); LEADER on whichever node leads when a worker takes it (the
# cluster's own work: bundles signed by the cluster CA, joins, removals). On a
# database of the node's own, every job runs where it was made.
RUNS_ON_NODE = "node"
RUNS_ON_LEADER = "leader"


@dataclass(frozen=True)
class JobKind:
    name: str
    title: str
    steps: tuple[StepSpec, ...] = field(default_factory=tuple)
    # Who may see jobs of this kind and their output (a capability in accounts.roles).
    view_capability: str = DEFAULT_VIEW_CAPABILITY
    runs_on: str = RUNS_ON_NODE


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


def view_capability_of(name: str) -> str:
    """A kind this process does not know is seen with the default capability."""
    kind = _KINDS.get(name)
    return kind.view_capability if kind is not None else DEFAULT_VIEW_CAPABILITY


def runs_on_leader(name: str) -> bool:
    """A kind this process does not know runs where it was made."""
    kind = _KINDS.get(name)
    return kind is not None and kind.runs_on == RUNS_ON_LEADER


def load_plugins() -> None:
    for module in settings.PAM_JOB_PLUGINS:
        importlib.import_module(module)
