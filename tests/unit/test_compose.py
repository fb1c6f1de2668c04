"""Checks on the production container files: compose file, Dockerfile and gunicorn settings.

No Docker engine runs where these tests run, so the compose file is validated against the
Compose Specification's JSON schema and the project's own rules instead of `docker compose
config`.
"""

import copy
import json
import re
import runpy
from pathlib import Path

import jsonschema
import pytest
import yaml
from tests.conftest import REFERENCE_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REFERENCE_DIR / "compose-spec.json"
COMPOSE_PATH = REPO_ROOT / "docker-compose.yml"
DOCKERFILE_PATH = REPO_ROOT / "Dockerfile"
DOCKERIGNORE_PATH = REPO_ROOT / ".dockerignore"
README_PATH = REPO_ROOT / "deploy" / "README.md"
GUNICORN_CONF_PATH = REPO_ROOT / "deploy" / "gunicorn.conf.py"

INFRA_IMAGES = {"mongodb": "mongo:7", "rabbitmq": "rabbitmq:3.13-management"}
APP_COMMANDS = {
    "gateway": ["gunicorn", "--config", "deploy/gunicorn.conf.py", "services.gateway.app:create_app()"],
    "feedback": ["gunicorn", "--config", "deploy/gunicorn.conf.py", "services.feedback.app:create_app()"],
    "scheduler": ["python", "-m", "services.scheduler"],
    "recipients": ["python", "-m", "services.recipients"],
    "sender": ["python", "-m", "services.sender"],
}
APP_SERVICES = tuple(APP_COMMANDS)
WEB_PORTS = {"gateway": 8000, "feedback": 8001}
HEALTHZ_PORTS = {**WEB_PORTS, "sender": 8002}
CHECK_SERVICES = ("scheduler", "recipients")
SHARED_ENV = (
    "TM_MONGO_URL",
    "TM_BROKER_URL",
    "TM_SECRET_KEY",
    "TM_SESSION_SECRET",
    "TM_PUBLIC_CALLBACK_URL",
    "TM_LOG_FORMAT",
    "TM_SMTP_URL",
    "TM_MAIL_FROM",
)
REQUIRED_VARS = {"RABBITMQ_USER", "RABBITMQ_PASSWORD", "TM_SECRET_KEY", "TM_SESSION_SECRET", "TM_PUBLIC_CALLBACK_URL"}
SECRET_NAME_WORDS = ("SECRET", "PASSWORD", "PASS", "KEY", "TOKEN")
MIN_STOP_GRACE_S = 30.0

# Compose interpolation: `${NAME:?message}` stops when NAME is unset or empty, and
# `${NAME:-default}` substitutes a default. The colon is optional in both forms.
REQUIRED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")
DEFAULTED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?-")
MODULE_PATH = re.compile(r"^services(\.[a-z][a-z0-9_]*)+$")
GUNICORN_TARGET = re.compile(r"^(?P<module>[A-Za-z0-9_.]+):(?P<factory>[a-z_][a-z0-9_]*)\(\)$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
DURATION_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# --- helpers -------------------------------------------------------------------------


def _duration_s(duration: str) -> float:
    """Return a Compose duration such as `30s` or `1m30s` in seconds. Raise ValueError when malformed."""
    parts = DURATION_PART.findall(duration)
    if not parts or "".join(number + unit for number, unit in parts) != duration:
        raise ValueError(f"not a Compose duration: {duration!r}")
    return sum(float(number) * DURATION_UNIT_S[unit] for number, unit in parts)


def _host_port(entry: object) -> str | None:
    """Return the host port that one `ports` entry publishes, or None when it publishes none."""
    if isinstance(entry, dict):
        published = entry.get("published")
        return None if published in (None, "") else str(published)

    # Short syntax: [[IP:]HOST_PORT:]CONTAINER_PORT[/PROTOCOL], where IP may be "[::1]".
    spec = str(entry).split("/")[0]
    if ":" not in spec:
        return None
    host_part = spec.rsplit(":", 1)[0]
    return host_part.rsplit(":", 1)[-1] or None


def _command_module(command: list[str]) -> str:
    """Return the Python module that a service command runs. Raise ValueError when there is none."""
    if command[:2] == ["python", "-m"] and len(command) >= 3:
        return command[2]

    if command[:1] == ["gunicorn"]:
        match = GUNICORN_TARGET.match(command[-1])
        if match:
            return match.group("module")
    raise ValueError(f"no Python module found in command {command!r}")


def _error_paths(validator: jsonschema.Draft7Validator, document: dict) -> list[tuple]:
    return [tuple(error.absolute_path) for error in validator.iter_errors(document)]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE_PATH.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@pytest.fixture(scope="module")
def validator(schema: dict) -> jsonschema.Draft7Validator:
    # The schema declares "https://json-schema.org/draft-07/schema", a URI that
    # jsonschema.validators.validator_for does not recognise (it would fall back to the
    # newest draft), so the draft-07 validator is chosen here by name.
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_PATH.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def readme() -> str:
    return README_PATH.read_text()


@pytest.fixture
def load_gunicorn_conf(monkeypatch: pytest.MonkeyPatch):
    """Return a function that loads deploy/gunicorn.conf.py under the given environment."""

    def load(**environ: str) -> dict:
        for name in ("PORT", "WEB_CONCURRENCY"):
            monkeypatch.delenv(name, raising=False)
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(GUNICORN_CONF_PATH))

    return load


# --- schema --------------------------------------------------------------------------


def test_schema_is_draft7(schema):
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)


def test_compose_matches_spec(validator, compose):
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(compose)]
    assert errors == []


def test_spec_rejects_string_ports(validator, compose):
    broken = copy.deepcopy(compose)
    broken["services"]["gateway"]["ports"] = "abc"
    assert ("services", "gateway", "ports") in _error_paths(validator, broken)


def test_spec_rejects_unknown_top_level_key(validator, compose):
    broken = copy.deepcopy(compose)
    broken["secretz"] = {"key": "value"}
    assert () in _error_paths(validator, broken)


def test_spec_rejects_misspelled_service_key(validator, compose):
    broken = copy.deepcopy(compose)
    broken["services"]["sender"]["helthcheck"] = broken["services"]["sender"].pop("healthcheck")
    assert ("services", "sender") in _error_paths(validator, broken)


def test_compose_has_no_version(compose):
    assert "version" not in compose


def test_compose_lists_services(compose):
    assert set(compose["services"]) == set(INFRA_IMAGES) | set(APP_SERVICES)


# --- infrastructure ------------------------------------------------------------------


@pytest.mark.parametrize("name, image", INFRA_IMAGES.items())
def test_infra_image(compose, name, image):
    assert compose["services"][name]["image"] == image


@pytest.mark.parametrize("name", INFRA_IMAGES)
def test_infra_named_volume(compose, name):
    volumes = compose["services"][name]["volumes"]
    sources = [volume.split(":")[0] for volume in volumes]
    assert sources
    for source in sources:
        assert source in compose["volumes"]


def test_mongodb_healthcheck_pings(compose):
    test = compose["services"]["mongodb"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "mongosh"]
    assert "ping" in test[-1]


def test_mongodb_publishes_no_port(compose):
    assert "ports" not in compose["services"]["mongodb"]


def test_rabbitmq_healthcheck_pings(compose):
    assert compose["services"]["rabbitmq"]["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]


def test_rabbitmq_ports(compose):
    ports = compose["services"]["rabbitmq"]["ports"]
    assert [_host_port(entry) for entry in ports] == ["5672", "15672"]
    assert [str(entry).rsplit(":", 1)[-1] for entry in ports] == ["5672", "15672"]


def test_rabbitmq_fixed_hostname(compose):
    assert compose["services"]["rabbitmq"]["hostname"] == "rabbitmq"


def test_rabbitmq_credentials_required(compose):
    environment = compose["services"]["rabbitmq"]["environment"]
    assert environment["RABBITMQ_DEFAULT_USER"].startswith("${RABBITMQ_USER:?")
    assert environment["RABBITMQ_DEFAULT_PASS"].startswith("${RABBITMQ_PASSWORD:?")


# --- application services ------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_command(compose, name):
    assert compose["services"][name]["command"] == APP_COMMANDS[name]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_command_module(compose, name):
    module = _command_module(compose["services"][name]["command"])
    assert MODULE_PATH.match(module), module
    assert module.split(".")[1] == name
    assert (REPO_ROOT / "services" / name).is_dir()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_healthcheck(compose, name):
    healthcheck = compose["services"][name].get("healthcheck")
    assert healthcheck is not None
    assert healthcheck.get("disable") in (None, False)
    assert healthcheck["test"][0] == "CMD"
    assert len(healthcheck["test"]) > 1


@pytest.mark.parametrize("name, port", HEALTHZ_PORTS.items())
def test_app_healthcheck_healthz(compose, name, port):
    test = compose["services"][name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "urllib.request.urlopen" in test[3]
    assert f"http://127.0.0.1:{port}/healthz" in test[3]


@pytest.mark.parametrize("name", CHECK_SERVICES)
def test_app_healthcheck_check_option(compose, name):
    assert compose["services"][name]["healthcheck"]["test"] == ["CMD", "python", "-m", f"services.{name}", "--check"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_waits_for_healthy_infra(compose, name):
    depends_on = compose["services"][name]["depends_on"]
    for infra in INFRA_IMAGES:
        assert depends_on[infra]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_restarts(compose, name):
    assert compose["services"][name]["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_stop_grace_period(compose, name):
    assert _duration_s(compose["services"][name]["stop_grace_period"]) >= MIN_STOP_GRACE_S


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_shared_environment(compose, name):
    environment = compose["services"][name]["environment"]
    for key in SHARED_ENV:
        assert environment[key] == compose["x-app-env"][key], key


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_image_built_here(compose, name):
    service = compose["services"][name]
    assert service["image"] == compose["services"]["gateway"]["image"]
    assert (REPO_ROOT / service["build"]["context"]).resolve() == REPO_ROOT
    assert (REPO_ROOT / service["build"]["dockerfile"]).is_file()


@pytest.mark.parametrize("name, port", WEB_PORTS.items())
def test_web_service_port(compose, name, port):
    service = compose["services"][name]
    assert service["environment"]["PORT"] == str(port)
    # Published on loopback only: the TLS proxy in front is the only way in from outside.
    assert service["ports"] == [f"127.0.0.1:{port}:{port}"]


def test_sender_has_no_container_name(compose):
    assert "container_name" not in compose["services"]["sender"]


def test_sender_publishes_no_host_port(compose):
    ports = compose["services"]["sender"].get("ports", [])
    assert [_host_port(entry) for entry in ports if _host_port(entry) is not None] == []


def test_sender_health_port_setting(compose):
    assert compose["services"]["sender"]["environment"]["TM_SENDER_HEALTH_PORT"] == str(HEALTHZ_PORTS["sender"])


def test_gateway_trusts_one_proxy(compose):
    """The gateway sits behind the documented reverse proxy, so it reads one X-Forwarded-For entry."""
    environment = compose["services"]["gateway"]["environment"]

    assert environment["TM_TRUSTED_PROXY_COUNT"] == "${TM_TRUSTED_PROXY_COUNT:-1}"
    assert "TM_TRUSTED_PROXY_COUNT" not in compose["x-app-env"]


def test_ports_are_strings(compose):
    # Unquoted, YAML 1.1 reads a short entry such as 22:22 as a base-60 integer.
    for name, service in compose["services"].items():
        for entry in service.get("ports", []):
            assert isinstance(entry, (str, dict)), (name, entry)


# --- environment and secrets ---------------------------------------------------------


def test_broker_url_uses_rabbitmq_credentials(compose):
    url = compose["x-app-env"]["TM_BROKER_URL"]
    assert url.startswith("amqp://${RABBITMQ_USER:?")
    assert ":${RABBITMQ_PASSWORD:?" in url
    assert url.endswith("}@rabbitmq:5672/%2F")


def test_mongo_url(compose):
    assert compose["x-app-env"]["TM_MONGO_URL"] == "mongodb://mongodb:27017/textmanager"


def test_log_format_json(compose):
    assert compose["x-app-env"]["TM_LOG_FORMAT"] == "json"


@pytest.mark.parametrize("name", ["TM_SECRET_KEY", "TM_SESSION_SECRET", "TM_PUBLIC_CALLBACK_URL"])
def test_app_secret_required(compose, name):
    assert compose["x-app-env"][name].startswith("${" + name + ":?")


def test_required_vars_found(compose_text):
    assert set(REQUIRED_VAR.findall(compose_text)) == REQUIRED_VARS


def test_required_vars_documented(compose_text, readme):
    for name in sorted(set(REQUIRED_VAR.findall(compose_text))):
        assert f"`{name}`" in readme, name


def test_defaulted_vars_documented(compose_text, readme):
    for name in sorted(set(DEFAULTED_VAR.findall(compose_text))):
        assert f"`{name}`" in readme, name


def test_secrets_have_no_default(compose_text):
    for name in DEFAULTED_VAR.findall(compose_text):
        assert not any(word in name.split("_") for word in SECRET_NAME_WORDS), name


def test_readme_documents_check_option(readme):
    for name in CHECK_SERVICES:
        assert f"python -m services.{name} --check" in readme


# --- helper tables -------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("8002", None),
        (8002, None),
        ("8002/udp", None),
        ("8000:8000", "8000"),
        ("127.0.0.1:5672:5672", "5672"),
        ("127.0.0.1::8002", None),
        ("[::1]:8080:80", "8080"),
        ("8000-8010:8000", "8000-8010"),
        ({"target": 8002}, None),
        ({"target": 8002, "published": "9000"}, "9000"),
        ({"target": 8002, "published": 9000}, "9000"),
    ],
)
def test_host_port(entry, expected):
    assert _host_port(entry) == expected


@pytest.mark.parametrize("duration, seconds", [("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0)])
def test_duration(duration, seconds):
    assert _duration_s(duration) == seconds


@pytest.mark.parametrize("duration", ["30", "", "thirty", "30s extra"])
def test_duration_rejects_malformed(duration):
    with pytest.raises(ValueError):
        _duration_s(duration)


def test_command_module_rejects_shell():
    with pytest.raises(ValueError):
        _command_module(["sh", "-c", "python -m services.sender"])


# --- Dockerfile and build context ----------------------------------------------------


def test_dockerfile_base_image():
    instructions = _dockerfile_instructions()
    assert [arguments for keyword, arguments in instructions if keyword == "FROM"] == ["python:3.11-slim"]


def test_dockerfile_installs_project():
    runs = [arguments for keyword, arguments in _dockerfile_instructions() if keyword == "RUN"]
    assert any(re.search(r"\bpip install \.(\s|$)", run) for run in runs)


def test_dockerfile_runs_as_non_root():
    users = [arguments for keyword, arguments in _dockerfile_instructions() if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_bakes_no_secrets():
    for keyword, arguments in _dockerfile_instructions():
        if keyword in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", arguments) or arguments.split()[:1]
            for name in names:
                assert not any(word in name.upper().split("_") for word in SECRET_NAME_WORDS), name


def test_dockerfile_copies_gunicorn_conf():
    copies = [arguments for keyword, arguments in _dockerfile_instructions() if keyword == "COPY"]
    assert any(arguments.startswith("deploy/gunicorn.conf.py ") for arguments in copies)


def test_dockerignore_allows_only_copied_paths():
    lines = [line.strip() for line in DOCKERIGNORE_PATH.read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"

    included = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    copies = [arguments for keyword, arguments in _dockerfile_instructions() if keyword == "COPY"]
    sources = {arguments.split()[0].rstrip("/") for arguments in copies}
    assert sources <= included
    assert ".env" not in included


# --- gunicorn settings ---------------------------------------------------------------


def test_gunicorn_defaults(load_gunicorn_conf):
    settings = load_gunicorn_conf()
    assert settings["bind"] == "0.0.0.0:8000"
    assert settings["workers"] == 2


def test_gunicorn_reads_environment(load_gunicorn_conf):
    settings = load_gunicorn_conf(PORT="8001", WEB_CONCURRENCY="5")
    assert settings["bind"] == "0.0.0.0:8001"
    assert settings["workers"] == 5


def test_gunicorn_no_preload(load_gunicorn_conf):
    assert load_gunicorn_conf()["preload_app"] is False


def test_gunicorn_logs_to_stdout(load_gunicorn_conf):
    assert load_gunicorn_conf()["accesslog"] == "-"


def test_gunicorn_graceful_within_grace_period(load_gunicorn_conf, compose):
    graceful_timeout = load_gunicorn_conf()["graceful_timeout"]
    for name in WEB_PORTS:
        assert graceful_timeout < _duration_s(compose["services"][name]["stop_grace_period"]), name


@pytest.mark.parametrize("value", ["abc", "0", "-1", "2.5"])
def test_gunicorn_rejects_bad_workers(load_gunicorn_conf, value):
    with pytest.raises(ValueError, match="WEB_CONCURRENCY"):
        load_gunicorn_conf(WEB_CONCURRENCY=value)
