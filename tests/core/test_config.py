"""The one configuration reader: settings, then the environment, then the default."""

import pytest

from pamportal.core.config import ConfigError, env, setting


def test_settings_win_over_the_environment_and_the_default(settings, monkeypatch):
    monkeypatch.setenv("PAM_TEST_VALUE", "7")
    assert setting("PAM_TEST_VALUE", 3, int) == 7
    settings.PAM_TEST_VALUE = 9
    assert setting("PAM_TEST_VALUE", 3, int) == 9
    monkeypatch.delenv("PAM_TEST_VALUE")
    del settings.PAM_TEST_VALUE
    assert setting("PAM_TEST_VALUE", 3, int) == 3
    monkeypatch.setenv("PAM_TEST_VALUE", "")  # empty is unset
    assert setting("PAM_TEST_VALUE", 3, int) == 3


@pytest.mark.parametrize("raw,default,expected", [
    ("12", 0, 12), ("1.5", 0.0, 1.5), ("3", 0.0, 3.0), ("text", "x", "text"),
    ("yes", False, True), ("Off", True, False), ("1", False, True), ("0", True, False),
])
def test_the_environment_is_typed_like_the_default(monkeypatch, raw, default, expected):
    monkeypatch.setenv("PAM_TEST_VALUE", raw)
    value = env("PAM_TEST_VALUE", default)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("raw,default,phrase", [
    ("twelve", 0, "is not a whole number"), ("1.5", 0, "is not a whole number"), ("fast", 0.0, "is not a number"),
    ("maybe", False, "is not a yes/no value"),
])
def test_a_bad_environment_value_is_an_error_naming_the_setting(monkeypatch, raw, default, phrase):
    monkeypatch.setenv("PAM_TEST_VALUE", raw)
    with pytest.raises(ConfigError) as caught:
        env("PAM_TEST_VALUE", default)
    assert "PAM_TEST_VALUE=" in str(caught.value) and phrase in str(caught.value)


def test_a_bad_settings_value_is_an_error_too(settings):
    settings.PAM_TEST_VALUE = True
    with pytest.raises(ConfigError, match="in settings"):
        setting("PAM_TEST_VALUE", 3, int)
    settings.PAM_TEST_VALUE = "a,b"
    with pytest.raises(ConfigError, match="cannot be read"):
        setting("PAM_TEST_VALUE", {}, lambda v: dict(v))
