"""Settings: every TM_ variable parses, and a bad value fails naming its variable."""

from __future__ import annotations

from dataclasses import fields

import pytest

from libs.common.settings import NON_NEGATIVE_SETTINGS, Settings, SettingsError

MONGODB_SECRETS = {"TM_SECRET_KEY": "k" * 44, "TM_SESSION_SECRET": "s" * 64}

# A valid raw value for each setting whose value is checked beyond its type, with the value expected.
SPECIAL_VALUES = {
    "broker_url": ("amqp://tm:pw@rabbitmq:5672/%2F", "amqp://tm:pw@rabbitmq:5672/%2F"),
    "mongo_url": ("mongodb://mongodb:27017/textmanager", "mongodb://mongodb:27017/textmanager"),
    "log_format": ("json", "json"),
    "log_level": ("WARNING", "WARNING"),
    "secure_cookies": ("true", True),
    "sender_health_port": ("9102", 9102),
    "sender_claim_lease_s": ("90", 90.0),
}
SAMPLE_BY_TYPE = {"str": ("https://texts.example.org", "https://texts.example.org"), "int": ("7", 7),
                  "float": ("2.5", 2.5), "bool": ("yes", True)}


def _type_name(field) -> str:
    return field.type if isinstance(field.type, str) else field.type.__name__


def _sample(field) -> tuple[str, object]:
    return SPECIAL_VALUES.get(field.name) or SAMPLE_BY_TYPE[_type_name(field)]


def _variable(name: str) -> str:
    return "TM_" + name.upper()


SETTING_FIELDS = fields(Settings)
NUMERIC_FIELDS = [field for field in SETTING_FIELDS if _type_name(field) in ("int", "float")]
POSITIVE_FIELDS = [field for field in NUMERIC_FIELDS if field.name not in NON_NEGATIVE_SETTINGS]


def test_defaults_without_variables():
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize("field", SETTING_FIELDS, ids=lambda field: _variable(field.name))
def test_each_variable_parses(field):
    raw, expected = _sample(field)

    settings = Settings.from_env({**MONGODB_SECRETS, _variable(field.name): raw})

    assert getattr(settings, field.name) == expected


@pytest.mark.parametrize("field", SETTING_FIELDS, ids=lambda field: _variable(field.name))
def test_empty_variable_keeps_default(field):
    settings = Settings.from_env({_variable(field.name): ""})

    assert getattr(settings, field.name) == getattr(Settings(), field.name)


@pytest.mark.parametrize("raw, expected", [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), (" On ", True),
    ("0", False), ("false", False), ("no", False), ("off", False),
])
def test_bool_values(raw, expected):
    assert Settings.from_env({"TM_SECURE_COOKIES": raw}).secure_cookies is expected


@pytest.mark.parametrize("field", NUMERIC_FIELDS, ids=lambda field: _variable(field.name))
@pytest.mark.parametrize("raw", ["many", "1,5", "12 s"])
def test_bad_number_names_variable(field, raw):
    with pytest.raises(SettingsError, match=_variable(field.name)):
        Settings.from_env({_variable(field.name): raw})


@pytest.mark.parametrize("field", POSITIVE_FIELDS, ids=lambda field: _variable(field.name))
@pytest.mark.parametrize("raw", ["0", "-1"])
def test_non_positive_number_names_variable(field, raw):
    with pytest.raises(SettingsError, match=_variable(field.name)):
        Settings.from_env({_variable(field.name): raw})


@pytest.mark.parametrize("name", NON_NEGATIVE_SETTINGS)
def test_zero_allowed_where_meaningful(name):
    assert getattr(Settings.from_env({_variable(name): "0"}), name) == 0

    with pytest.raises(SettingsError, match=_variable(name)):
        Settings.from_env({_variable(name): "-1"})


@pytest.mark.parametrize("name, raw", [
    ("TM_SECURE_COOKIES", "maybe"),
    ("TM_SESSION_HOURS", "nan"),
    ("TM_SCHEDULER_POLL_S", "inf"),
    ("TM_SENDER_HEALTH_PORT", "70000"),
    ("TM_SENDER_PACING_MARGIN_MS", "-1"),
    ("TM_SENDER_PACING_MARGIN_MS", "201"),
    ("TM_SENDER_PACING_MARGIN_MS", "nan"),
    ("TM_BROKER_URL", "redis://localhost:6379"),
    ("TM_MONGO_URL", "postgres://localhost/textmanager"),
    ("TM_LOG_FORMAT", "xml"),
    ("TM_LOG_LEVEL", "LOUD"),
    ("TM_LOG_LEVEL", "info"),
])
def test_bad_value_names_variable(name, raw):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: raw, **MONGODB_SECRETS})


@pytest.mark.parametrize("secrets", [
    {},
    {"TM_SECRET_KEY": "k" * 44},
    {"TM_SESSION_SECRET": "s" * 64},
], ids=["none", "secret-key-only", "session-secret-only"])
def test_mongodb_needs_secrets(secrets):
    environ = {"TM_MONGO_URL": "mongodb://mongodb:27017/textmanager", **secrets}

    with pytest.raises(SettingsError, match="TM_SECRET_KEY and TM_SESSION_SECRET"):
        Settings.from_env(environ)


@pytest.mark.parametrize("lease, timeout", [("30", "15"), ("20", "15"), ("60", "45")])
def test_claim_lease_outlasts_twilio_call(lease, timeout):
    with pytest.raises(SettingsError, match="more than twice TM_TWILIO_TIMEOUT_S"):
        Settings.from_env({"TM_SENDER_CLAIM_LEASE_S": lease, "TM_TWILIO_TIMEOUT_S": timeout})


def test_claim_lease_long_enough():
    settings = Settings.from_env({"TM_SENDER_CLAIM_LEASE_S": "31", "TM_TWILIO_TIMEOUT_S": "15"})

    assert settings.sender_claim_lease_s == 31.0


def test_mongomock_needs_no_secrets():
    assert Settings.from_env({"TM_MONGO_URL": "mongomock://localhost/tm"}).uses_mongomock is True


def test_settings_frozen():
    settings = Settings()

    with pytest.raises(AttributeError):
        settings.broker_url = "amqp://elsewhere"
