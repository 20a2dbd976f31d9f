"""The one atomic private-file writer."""

import os
import stat

import pytest

from pamportal.core import files
from pamportal.core.files import private_file, write_private


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_private_writes_the_bytes_with_the_mode_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "key.pem"
    write_private(path, b"secret")
    assert path.read_bytes() == b"secret" and _mode(path) == 0o600
    write_private(path, b"public", 0o644)
    assert path.read_bytes() == b"public" and _mode(path) == 0o644
    assert os.listdir(tmp_path) == ["key.pem"]


def test_the_mode_is_set_before_the_file_takes_its_name(tmp_path, monkeypatch):
    path = tmp_path / "token"
    seen = []
    real_replace = os.replace

    def replace(source, target):
        seen.append(_mode(source))
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", replace)
    write_private(path, b"x", 0o640)
    assert seen == [0o640]


def test_the_file_and_its_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (synced.append(os.path.isdir(f"/proc/self/fd/{fd}")),
                                                       real_fsync(fd)))
    write_private(tmp_path / "f", b"x")
    assert synced == [False, True]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "config.json"
    write_private(path, b"old")
    with pytest.raises(RuntimeError), private_file(path) as handle:
        handle.write(b"half")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["config.json"]


def test_exclusive_creates_once_and_refuses_to_replace(tmp_path):
    path = tmp_path / "mek"
    write_private(path, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_private(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first" and _mode(path) == 0o600
    assert os.listdir(tmp_path) == ["mek"]
