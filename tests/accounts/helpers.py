"""Small helpers for the account and setup tests: the audit reader lives in
tests/support/audit.py and is re-exported here for the tests that import it from here."""

from tests.support.audit import events

__all__ = ["events"]
