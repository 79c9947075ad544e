"""One typed configuration: declared once, bad values refused in one sentence naming the
variable, secrets never printed, the README table generated from it, no files made on import."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.config import ConfigError, Settings, readme_table_is_current, settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_typed_values_from_the_environment(tmp_path):
    s = Settings.from_env({"OMNISTREAM_HOME": str(tmp_path), "OMNISTREAM_WEB_PORT": "7001",
                           "OMNISTREAM_METRIC_WINDOW_S": "2.5", "OMNISTREAM_LOG_LEVEL": "debug",
                           "OMNISTREAM_CODEGEN_PROCESSES": ""})  # empty counts as unset
    assert (s.web_port, s.metric_window_s, s.log_level, s.codegen_processes) == (7001, 2.5, "DEBUG", None)
    assert s.partitions == 4 and s.kafka_bootstrap == "127.0.0.1:9092"


@pytest.mark.parametrize("env, value, words", [
    ("OMNISTREAM_WEB_PORT", "70000", "less than or equal to 65535"),
    ("OMNISTREAM_WEB_PORT", "eighty", "valid integer"),
    ("OMNISTREAM_METRIC_WINDOW_S", "-1", "greater than 0"),
    ("OMNISTREAM_AUTO_OFFSET_RESET", "newest", "'earliest' or 'latest'"),
    ("OMNISTREAM_PATTERN_PRECISION_FLOOR", "1.5", "less than or equal to 1"),
    ("DATABASE_URL", "mysql://x", "should match pattern"),
])
def test_a_bad_value_is_one_sentence_naming_the_variable(env, value, words):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({env: value}, local_stack=False)
    message = str(err.value)
    assert message.startswith(f"{env}: ") and words in message and "\n" not in message


def test_secrets_never_show(tmp_path):
    s = Settings.from_env({"KAFKA_SASL_PASSWORD": "hunter2-hunter2", "OMNISTREAM_MODEL_KEY": "k" * 20,
                           "OMNISTREAM_ALERT_WEBHOOK_URL": "https://hooks.example/T0KEN",
                           "DATABASE_URL": "postgresql://u:pw-in-url@db/x"}, local_stack=False)
    for text in (repr(s), str(s), str(s.model_dump()), s.model_dump_json()):
        for secret in ("hunter2", "kkkkkkkkkk", "T0KEN"):
            assert secret not in text, (secret, text)
    assert "pw-in-url" not in repr(s) and "pw-in-url" not in str(s)
    assert s.kafka_security["sasl_plain_password"] == "hunter2-hunter2"  # still usable
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"OMNISTREAM_MODEL_KEY": "short-secret"}, local_stack=False)
    assert "OMNISTREAM_MODEL_KEY" in str(err.value) and "short-secret" not in str(err.value)


def test_broker_and_database_fall_back_to_the_local_stack_then_the_environment_wins(tmp_path):
    (tmp_path / "state.json").write_bytes(orjson.dumps({
        "kafka": {"bootstrap": "127.0.0.1:19092"},
        "postgres": {"url": "postgresql://postgres@127.0.0.1:15432/omnistream"}}))
    s = Settings.from_env({"OMNISTREAM_HOME": str(tmp_path)})
    assert s.kafka_bootstrap == "127.0.0.1:19092" and s.database_url.endswith(":15432/omnistream")
    s = Settings.from_env({"OMNISTREAM_HOME": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": "b:1"})
    assert s.kafka_bootstrap == "b:1"


def test_every_variable_the_code_names_is_declared():
    declared = {f.alias for f in Settings.model_fields.values()}
    named = set()
    for folder in ("streams", "agents", "schemas"):
        for path in (ROOT / folder).rglob("*.py"):
            named |= set(re.findall(r"\b(OMNISTREAM_[A-Z0-9_]*[A-Z0-9]|KAFKA_(?:SASL|SSL|SECURITY)_[A-Z_]+"
                                    r"|KAFKA_BOOTSTRAP_SERVERS|DATABASE_URL)\b", path.read_text()))
    assert named - declared == set()
    assert len(declared) >= 45


def test_readme_table_is_generated_from_the_settings(tmp_path):
    assert readme_table_is_current(ROOT / "README.md")
    assert settings_table().count("\n") == len(Settings.model_fields) + 1
    stale = tmp_path / "README.md"
    stale.write_text((ROOT / "README.md").read_text().replace("tumbling window size", "window"))
    assert not readme_table_is_current(stale)
    out = subprocess.run([sys.executable, "-m", "streams.config", "--check", str(stale)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "stale" in out.stderr


def test_importing_the_worker_modules_creates_no_file(tmp_path):
    """The model key file and the alert rules are made/read when the worker starts, not on import."""
    env = {**os.environ, "OMNISTREAM_HOME": str(tmp_path / "home")}
    env.pop("OMNISTREAM_MODEL_KEY", None)
    code = ("import streams.learning.topology, streams.codegen.topology, streams.monitoring.topology, "
            "streams.interfaces.web; import streams.alerting.topology as a; print(a._engine is None)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert not (tmp_path / "home").exists() or list((tmp_path / "home").rglob("*")) == []


def test_the_cli_refuses_a_bad_setting_with_exit_2(tmp_path):
    env = {**os.environ, "OMNISTREAM_HOME": str(tmp_path), "OMNISTREAM_WEB_PORT": "0"}
    out = subprocess.run([sys.executable, "-m", "streams.interfaces.cli", "worker"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == ("omnistream: bad setting: OMNISTREAM_WEB_PORT: Input should be greater "
                                  "than or equal to 1 (got '0')")


def test_tls_gets_a_context_with_or_without_a_ca_file_and_keeps_a_client_certificate(tmp_path):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    plain = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL"}, local_stack=False)
    assert plain.kafka_security["ssl_context"] is not None  # the system's CAs, not none at all
    with_cert = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                   "KAFKA_SSL_CERTFILE": str(tmp_path / "c.pem"),
                                   "KAFKA_SSL_KEYFILE": str(tmp_path / "k.pem")}, local_stack=False)
    assert with_cert.kafka_security["ssl_context"] is not None
    assert "ssl_context" not in Settings.from_env({}, local_stack=False).kafka_security
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "other.pem").write_bytes(other.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    mismatched = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL",
                                    "KAFKA_SSL_CERTFILE": str(tmp_path / "c.pem"),
                                    "KAFKA_SSL_KEYFILE": str(tmp_path / "other.pem")}, local_stack=False)
    with pytest.raises(ssl.SSLError):  # the certificate is really loaded: a wrong key is refused
        _ = mismatched.kafka_security
