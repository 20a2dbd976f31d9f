import pytest


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Each test gets its own data dir (setup token, MEK file, TLS files), so nothing is
    shared between tests or with the developer's node."""
    settings.PAM_DATA_DIR = tmp_path
    settings.PAM_TLS_CERT = tmp_path / "tls" / "node.crt"
    settings.PAM_TLS_KEY = tmp_path / "tls" / "node.key"
    return tmp_path
