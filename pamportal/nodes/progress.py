"""The node's setup progress as the services that advance it see it: this node's row
locked for the change, and the refusal of a step that is not due (or no longer is)."""

from __future__ import annotations

from dataclasses import dataclass

from pamportal.audit.refusals import Refused
from pamportal.nodes.identity import node_filter

from .models import Node
from .selectors import NODE_STEPS, node_setup_due

STEP_TITLES = {"node": "the node address", "preflight": "preflight", "licence": "the licence",
               "mek": "the Master Encryption Key"}


class StepRefused(Refused):
    """A setup step the operator may not take now, with the message to show. Nothing
    was changed, so nothing is recorded: the services raise it without ``record()``."""

    def __init__(self, message: str):
        super().__init__(message, action="setup.step_refused", target="node", reason=message)


@dataclass(frozen=True)
class StepResult:
    ok: bool
    message: str = ""


def node_locked() -> Node:
    """This node's row, created if need be, locked until the transaction ends."""
    Node.objects.get_or_create(**node_filter())
    return Node.objects.select_for_update().get(**node_filter())


def refuse_if_finalised(node: Node) -> None:
    if node.finalised_at is not None:
        raise StepRefused("Setup of this node is already finalised.")


def refuse_unless_due(node: Node, step: str) -> None:
    """Refuse a step whose earlier steps are not done."""
    due = node_setup_due(node)
    if due is None:
        raise StepRefused("Setup of this node is already finalised.")
    if NODE_STEPS.index(due) < NODE_STEPS.index(step):
        raise StepRefused(f"Finish {STEP_TITLES[due]} first.")
