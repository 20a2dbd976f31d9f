"""TOTP codes for tests that type one more than once for the same user.

django-otp accepts a time step once per device, and none at or before the last one used
(``last_t``); with its clock-drift sync, a code taken from a step ahead can also land
outside the window it checks. So a test takes the code of the *current* step, once that
step is later than the one it used last, and never in the last second of a step, where
the server might already check the next one. It waits for that (at most one step plus a
second) instead of retrying.
"""

from __future__ import annotations

import time

from django_otp.oath import TOTP

STEP = 30
MARGIN = 1.0  # seconds kept clear of the end of a step


def fresh_step(after_step: int = -1, *, step: int = STEP, t0: int = 0, margin: float = MARGIN,
               clock=time.time, sleep=time.sleep) -> int:
    """The current time step once it is later than ``after_step`` with more than
    ``margin`` seconds left in it; waits (bounded) until then."""
    deadline = clock() + 2 * step + margin + 5
    while True:
        now = clock()
        current, into = divmod(now - t0, step)
        current = int(current)
        if current > after_step and step - into > margin:
            return current
        if now > deadline:
            raise RuntimeError(f"no TOTP step after {after_step} came by {deadline}: is the clock moving?")
        sleep(min(step - into + 0.05, step))  # until the next step begins


def code_at(key: bytes, t: int, *, step: int = STEP, t0: int = 0, digits: int = 6) -> str:
    """The code of time step ``t``."""
    totp = TOTP(key, step, t0, digits)
    totp.time = t0 + t * step + step / 2
    return f"{totp.token():0{digits}d}"


def fresh_code(key: bytes, after_step: int = -1, *, step: int = STEP, t0: int = 0, digits: int = 6,
               margin: float = MARGIN) -> tuple[str, int]:
    """A code the server accepts now for a device last used at ``after_step``, and its
    step (pass it as ``after_step`` next time)."""
    t = fresh_step(after_step, step=step, t0=t0, margin=margin)
    return code_at(key, t, step=step, t0=t0, digits=digits), t
