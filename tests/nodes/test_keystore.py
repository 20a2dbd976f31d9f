import pytest

from pamportal.crypto import mek
from pamportal.nodes import keystore


def test_no_mek_until_installed(data_dir):
    assert not keystore.mek_exists()
    with pytest.raises(keystore.MekMissing):
        keystore.seal(purpose="x", data=b"y")


def test_install_once_0600_and_seal(data_dir):
    key = mek.generate()
    keystore.mek_install(key)
    path = data_dir / "mek.key"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert keystore.mek_load() == key
    with pytest.raises(FileExistsError):
        keystore.mek_install(mek.generate())
    sealed = keystore.seal(purpose="node-key", data=b"private")
    assert keystore.unseal(purpose="node-key", sealed=sealed) == b"private"


def test_damaged_key_file(data_dir):
    (data_dir / "mek.key").write_bytes(b"short")
    with pytest.raises(keystore.MekMissing, match="damaged"):
        keystore.mek_load()
