"""Gunicorn settings for the gateway and feedback web services in production."""

import os


def _read_int(name: str, default: int) -> int:
    """Return the environment variable `name` as a positive int, or `default` when unset."""
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


bind = f"0.0.0.0:{_read_int('PORT', 8000)}"
workers = _read_int("WEB_CONCURRENCY", 2)

# pymongo's MongoClient is not fork-safe. Each worker builds its own client inside
# create_app(), so the app must be loaded after the fork, never in the master.
preload_app = False

# "-" writes to stdout or stderr, where the container runtime collects the lines.
accesslog = "-"
errorlog = "-"

# A request that takes longer than `timeout` seconds gets its worker killed and restarted.
timeout = 30
# On SIGTERM, workers get this many seconds to finish their requests. It stays below the
# compose stop_grace_period of 30s, so Docker's SIGKILL does not arrive first.
graceful_timeout = 25
keepalive = 5

# Workers signal they are alive by updating a temporary file. In memory that update
# cannot stall on a slow container filesystem and get a busy worker killed as dead.
worker_tmp_dir = "/dev/shm"
