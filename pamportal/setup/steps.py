"""The first-boot wizard's steps, in order: the one place that lists them.

A step with a ``url_name`` is built; the wizard walks the built steps in this order
and shows the others as coming in a later release. To add a step, give it a view and
a ``url_name`` and say in ``views.current_step`` when it is due."""

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
    WizardStep("preflight", "Preflight"),
    WizardStep("licence", "Licence"),
    WizardStep("mek", "Master Encryption Key"),
    WizardStep("finalise", "Finalise"),
)

STEP_BY_KEY = {step.key: step for step in STEPS}


@dataclass(frozen=True)
class StepView:
    """A step as the step list shows it: done, current, pending (built, not reached)
    or later (not in this release)."""

    step: WizardStep
    state: str

    @property
    def title(self) -> str:
        return self.step.title


def step_list(current: str | None) -> list[StepView]:
    """The steps for display, relative to the ``current`` step key (None: all done)."""
    keys = [step.key for step in STEPS]
    position = keys.index(current) if current in keys else len(keys)
    views = []
    for index, step in enumerate(STEPS):
        if not step.available:
            state = "later"
        elif index < position:
            state = "done"
        elif index == position:
            state = "current"
        else:
            state = "pending"
        views.append(StepView(step, state))
    return views
