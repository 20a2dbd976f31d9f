import pytest


@pytest.fixture(autouse=True)
def data_dir(data_dir):
    """Every setup test gets its own data dir (tests/support/fixtures.py)."""
    return data_dir
