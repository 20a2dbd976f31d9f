import pytest


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Each test gets its own data dir, so the setup-token file is never shared."""
    settings.PAM_DATA_DIR = tmp_path
    return tmp_path
