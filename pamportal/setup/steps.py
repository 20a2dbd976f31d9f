"""The first-boot wizard's steps, in order: the one place that lists them.

A step with a ``url_name`` is built; the wizard walks the built steps in this order
and shows the others as coming in a later release. To add a step, give it a view and
a ``url_name`` and say when it is due: in ``views.current_step`` for the steps before
the administrator exists (session state), in ``selectors.node_setup_due`` for the
steps after (database state, so a later visit resumes there)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WizardStep:
    key: str
    title: str
    url_name: str | None = None  # None: not in this release

    @property
    def available(self) -> bool:
        return self.url_name is not None


STEPS: tuple[WizardStep, ...] = (
    WizardStep("token", "Setup token", "setup:token"),
    WizardStep("administrator", "Administrator", "setup:administrator"),
    WizardStep("totp", "Two-factor (TOTP)", "setup:totp"),
    WizardStep("node", "Node address", "setup:node"),
    WizardStep("preflight", "Preflight", "setup:preflight"),
    WizardStep("licence", "Licence", "setup:licence"),
    WizardStep("mek", "Master Encryption Key", "setup:mek"),
    WizardStep("finalise", "Finalise", "setup:finalise"),
)

STEP_BY_KEY = {step.key: step for step in STEPS}


@dataclass(frozen=True)
class StepView:
    """A step as the step list shows it: done, current, pending (built, not reached)
    or later (not in this release). ``link`` is set for a done step the operator may
    go back to."""

    step: WizardStep
    state: str
    link: str | None = None

    @property
    def title(self) -> str:
        return self.step.title


# Steps the operator may revisit once done (the ones before the administrator are
# finished for good once it exists).
REVISITABLE = frozenset({"node", "preflight", "licence", "mek"})


def step_list(current: str | None, due: str | None = None) -> list[StepView]:
    """The steps for display: ``current`` is the step on screen, ``due`` the first one
    not done yet (defaults to ``current``; None for both: all done)."""
    keys = [step.key for step in STEPS]
    due = current if due is None else due
    position = keys.index(due) if due in keys else len(keys)
    views = []
    for index, step in enumerate(STEPS):
        link = None
        if not step.available:
            state = "later"
        elif step.key == current:
            state = "current"
        elif index < position:
            state = "done"
            link = step.url_name if step.key in REVISITABLE and due != step.key else None
        else:
            state = "pending"
        views.append(StepView(step, state, link))
    return views
