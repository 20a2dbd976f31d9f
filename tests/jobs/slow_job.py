"""A test-only job kind for the worker-killed test, loaded by a node's worker through
``PAM_JOB_PLUGINS=tests.jobs.slow_job``.

Its first step logs a line and then holds (bounded: 60 s) until a "release" file
appears in the data dir, so a test can kill the worker while the step runs.
"""

from __future__ import annotations

import time

from django.conf import settings

from pamportal.jobs.registry import JobKind, StepSpec, register

KIND = "test.slow"
HOLD_SECONDS = 60.0


def release_file():
    return settings.PAM_DATA_DIR / "release"


def _hold(ctx) -> dict:
    ctx.log(f"holding until {release_file()} exists (at most {HOLD_SECONDS:.0f} s)")
    deadline = time.monotonic() + HOLD_SECONDS
    while not release_file().exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not released within {HOLD_SECONDS:.0f} s")
        time.sleep(0.1)
    ctx.log("released")
    return {"released": True}


def _after(ctx) -> dict:
    ctx.log("second step ran")
    return {"after": True}


register(
    JobKind(
        name=KIND,
        title="Slow test job",
        steps=(
            StepSpec("hold", "Hold until released", _hold, max_attempts=1),
            StepSpec("after", "After the hold", _after, max_attempts=1),
        ),
    )
)
