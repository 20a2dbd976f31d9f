"""The embedded broker writes each message whole before a reader can see it."""

import json
import os

import pytest
from kombu import Connection

from pamportal.core import broker


def _connection(folder):
    return Connection(
        "filesystem://", transport="pamportal.core.broker:Transport",
        transport_options={"data_folder_in": str(folder), "data_folder_out": str(folder),
                           "control_folder": str(folder / "control")},
    )


def test_message_file_appears_only_when_complete(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def watching_replace(src, dst):
        # At the moment of the rename: no readable message yet, the partial file whole.
        seen.append((sorted(n for n in os.listdir(tmp_path) if n.endswith(".msg")), open(src, "rb").read()))
        return real_replace(src, dst)

    monkeypatch.setattr(broker.os, "replace", watching_replace)
    with _connection(tmp_path) as conn:
        # Queue names differ per test: kombu keeps declared bindings per process.
        queue = conn.SimpleQueue("atomic-q")
        queue.put({"hello": "world"})
        assert len(seen) == 1
        listed, content = seen[0]
        assert listed == []
        assert json.loads(content)["body"]  # the whole message, not an empty file
        message = queue.get(timeout=2)
        assert message.payload == {"hello": "world"}
        message.ack()
        queue.close()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(broker._PARTIAL)]


def test_reader_ignores_partial_files(tmp_path):
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("partial-q")
        (tmp_path / "1_x.partial-q.msg.part").write_bytes(b"")  # a write under way
        queue.put({"n": 1})
        assert queue.get(timeout=2).payload == {"n": 1}
        assert (tmp_path / "1_x.partial-q.msg.part").exists()
        queue.close()


def test_settings_use_it_for_the_embedded_default(settings):
    if not settings.CELERY_BROKER_URL.startswith("filesystem://"):
        pytest.skip("CELERY_BROKER_URL names another broker: the embedded default is not in use")
    assert settings.CELERY_BROKER_TRANSPORT == "pamportal.core.broker:Transport"
    from pamportal.celery import app

    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, broker.Transport)
