import pytest

from pamportal.wsgi import ListenerGate


def _call(gate, path):
    seen = {}

    def start_response(status, headers):
        seen["status"] = status

    body = b"".join(gate({"PATH_INFO": path}, start_response))
    return seen.get("status", "200 OK (app)"), body


def app(environ, start_response):
    start_response("200 OK (app)", [])
    return [b"app"]


@pytest.mark.parametrize(
    "listener,path,passes",
    [
        ("console", "/", True),
        ("console", "/setup/", True),
        ("console", "/api/setup/v1/join", False),
        ("console", "/api/delegation/v1/heartbeat", False),
        ("setup-api", "/api/setup/v1/join", True),
        ("setup-api", "/", False),
        ("setup-api", "/api/delegation/v1/heartbeat", False),
        ("delegation", "/api/delegation/v1/heartbeat", True),
        ("delegation", "/api/setup/v1/join", False),
        ("delegation", "/account/login/", False),
    ],
)
def test_each_listener_answers_only_its_paths(listener, path, passes):
    status, body = _call(ListenerGate(app, listener), path)
    assert (body == b"app") is passes
    assert status.startswith("200" if passes else "404"), status


def test_unknown_listener_refused():
    with pytest.raises(ValueError):
        ListenerGate(app, "admin")
