import pytest

from tests.jobs import kinds


@pytest.fixture(autouse=True)
def _reset_kinds():
    kinds.reset()
    yield
    kinds.reset()
