"""Runtime configuration: environment variables first, then the local stack's state file, then defaults.

The state file is written by `omnistream infra up`, so after it every other command finds the
services without any `export` (run `omnistream infra env` to get those lines for other tools).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/omnistream"
DEFAULT_WEB_PORT = 6066


def repo_root() -> Path | None:
    """The source checkout this package runs from (editable install), if any."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").exists() else None


def omnistream_home() -> Path:
    """Folder for the local stack's state, data and logs (git-ignored `.omnistream/`)."""
    env = os.environ.get("OMNISTREAM_HOME")
    if env:
        return Path(env).resolve()
    return (repo_root() or Path.cwd()) / ".omnistream"


def cache_dir() -> Path:
    """Folder for downloaded jars; shared by every stack so the second start needs no network."""
    env = os.environ.get("OMNISTREAM_CACHE_DIR")
    if env:
        return Path(env).resolve()
    return (repo_root() or Path.home()) / ".cache" / "omnistream"


def state_file() -> Path:
    return omnistream_home() / "state.json"


def read_state() -> dict:
    try:
        return orjson.loads(state_file().read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str
    database_url: str
    web_host: str = "127.0.0.1"
    web_port: int = DEFAULT_WEB_PORT
    log_level: str = "INFO"
    log_file: str | None = None
    app_id: str = "omnistream"
    partitions: int = 4
    auto_offset_reset: str = "earliest"
    # How long the group waits for a member that stopped answering (a killed worker) before its
    # partitions go to the others: Kafka's default, not faust's 60 s.
    session_timeout_s: float = 45.0
    kafka_security: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        state = read_state()
        return cls(
            kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
            or state.get("kafka", {}).get("bootstrap")
            or DEFAULT_BOOTSTRAP,
            database_url=os.environ.get("DATABASE_URL")
            or state.get("postgres", {}).get("url")
            or DEFAULT_DATABASE_URL,
            web_host=os.environ.get("OMNISTREAM_WEB_HOST", "127.0.0.1"),
            web_port=_int_env("OMNISTREAM_WEB_PORT", DEFAULT_WEB_PORT),
            log_level=os.environ.get("OMNISTREAM_LOG_LEVEL", "INFO").upper(),
            log_file=os.environ.get("OMNISTREAM_LOG_FILE") or None,
            app_id=os.environ.get("OMNISTREAM_APP_ID", "omnistream"),
            partitions=_int_env("OMNISTREAM_PARTITIONS", 4),
            auto_offset_reset=os.environ.get("OMNISTREAM_AUTO_OFFSET_RESET", "earliest"),
            session_timeout_s=_float_env("OMNISTREAM_SESSION_TIMEOUT_S", 45.0),
            kafka_security=kafka_security_from_env(),
        )


def kafka_security_from_env() -> dict:
    """SASL/TLS settings passed through to aiokafka (names follow aiokafka's keyword arguments)."""
    out: dict = {}
    mapping = {
        "KAFKA_SECURITY_PROTOCOL": "security_protocol",
        "KAFKA_SASL_MECHANISM": "sasl_mechanism",
        "KAFKA_SASL_USERNAME": "sasl_plain_username",
        "KAFKA_SASL_PASSWORD": "sasl_plain_password",
    }
    for env, key in mapping.items():
        if os.environ.get(env):
            out[key] = os.environ[env]
    cafile = os.environ.get("KAFKA_SSL_CAFILE")
    if cafile:
        import ssl

        ctx = ssl.create_default_context(cafile=cafile)
        certfile, keyfile = os.environ.get("KAFKA_SSL_CERTFILE"), os.environ.get("KAFKA_SSL_KEYFILE")
        if certfile:
            ctx.load_cert_chain(certfile, keyfile)
        out["ssl_context"] = ctx
    return out


def model_key() -> bytes:
    """Key that signs model snapshots. OMNISTREAM_MODEL_KEY (same on every worker and on the
    machine running `replay`), else a random key kept in the stack's home (created once, 0600):
    enough when all workers share one machine, as the local stack does."""
    env = os.environ.get("OMNISTREAM_MODEL_KEY")
    if env:
        if len(env) < 16:
            raise ValueError("OMNISTREAM_MODEL_KEY must be at least 16 characters")
        return env.encode()
    path = omnistream_home() / "model.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    for _ in range(50):  # another process may be between creating and writing the file
        key = path.read_text().strip()
        if key:
            return key.encode()
        time.sleep(0.05)
    raise RuntimeError(f"{path} is empty: delete it and start again")
