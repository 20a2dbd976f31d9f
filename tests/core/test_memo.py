"""``core.memo.Memo``: one read per window and key; forgotten at once on demand."""

from __future__ import annotations

from pamportal.core import memo as memo_module
from pamportal.core.memo import Memo, forget_all


def test_one_read_per_window_and_key(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(memo_module.time, "monotonic", lambda: now[0])
    reads, key = [], ["a"]
    memo = Memo(lambda: reads.append(1) or len(reads), seconds=1.0, key=lambda: key[0])
    assert [memo.get(), memo.get()] == [1, 1] and len(reads) == 1
    now[0] += 0.99
    assert memo.get() == 1
    now[0] += 0.02  # the window is over
    assert memo.get() == 2
    key[0] = "b"  # another key: read again, whatever the window
    assert memo.get() == 3
    memo.forget()
    assert memo.get() == 4
    forget_all()
    assert memo.get() == 5 and len(reads) == 5


def test_a_failed_read_is_not_kept():
    calls = []

    def read():
        calls.append(1)
        raise RuntimeError("the database is away")

    memo = Memo(read, seconds=60.0)
    for _ in range(2):
        try:
            memo.get()
        except RuntimeError:
            pass
    assert len(calls) == 2
