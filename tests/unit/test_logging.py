"""Structured logging: one JSON object per line, correlation id from the context."""

from __future__ import annotations

import asyncio
import io
import logging
import logging.handlers

import orjson

from agents.logging import JsonFormatter, correlation_id_var, handlers_for, log_context


def _capture() -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.{id(buf)}")
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, buf


def test_line_is_json_with_context_and_metadata():
    logger, buf = _capture()
    with log_context(correlation_id="abc-1", component="tester"):
        logger.info("hello %s", "world", extra={"metadata": {"n": 3}})
    logger.warning("outside")
    first, second = (orjson.loads(line) for line in buf.getvalue().splitlines())
    assert first["message"] == "hello world"
    assert first["correlation_id"] == "abc-1" and first["component"] == "tester"
    assert first["metadata"] == {"n": 3} and first["level"] == "INFO"
    assert first["timestamp"].endswith("+00:00")
    assert second["correlation_id"] is None and second["component"] is None


def test_exception_is_inside_the_json():
    logger, buf = _capture()
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    entry = orjson.loads(buf.getvalue())
    assert "ValueError: boom" in entry["exception"]


async def test_context_does_not_leak_between_tasks():
    logger, buf = _capture()

    async def handle(cid: str) -> None:
        with log_context(correlation_id=cid):
            await asyncio.sleep(0.01)
            logger.info("handled")
            assert correlation_id_var.get() == cid

    await asyncio.gather(*(handle(f"cid-{i}") for i in range(20)))
    seen = sorted(orjson.loads(line)["correlation_id"] for line in buf.getvalue().splitlines())
    assert seen == sorted(f"cid-{i}" for i in range(20))


def test_rotation_by_size(tmp_path):
    path = tmp_path / "app.log"
    handlers = handlers_for(str(path), max_bytes=2000, backups=2)
    rotating = handlers[1]
    assert isinstance(rotating, logging.handlers.RotatingFileHandler)
    logger = logging.getLogger("test.rotation")
    logger.handlers = [rotating]
    logger.propagate = False
    for i in range(100):
        logger.warning("line %d", i)
    rotating.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["app.log", "app.log.1", "app.log.2"]
    for line in path.read_text().splitlines():
        assert orjson.loads(line)["logger"] == "test.rotation"


def test_registered_secrets_and_url_passwords_never_reach_a_log_line():
    import logging

    from agents.logging import JsonFormatter, redact_secrets

    redact_secrets("hunter2-secret-token")
    record = logging.LogRecord("t", logging.WARNING, __file__, 1,
                               "posting to https://hooks.example/x/%s failed; db %s", (
                                   "hunter2-secret-token", "postgresql://app:pw-123@db:5432/x"), None)
    record.metadata = {"url": "https://hooks.example/x/hunter2-secret-token"}
    line = JsonFormatter().format(record)
    assert "hunter2-secret-token" not in line and "pw-123" not in line
    assert "app:***@db:5432" in line and line.count("***") == 3


def test_settings_register_every_secret_they_hold():
    from agents.logging import redacted
    from streams.config import Settings

    Settings.from_env({"DATABASE_URL": "postgresql://app:p%40ss-word@db/x", "OMNISTREAM_WEB_TOKEN": "w" * 20,
                       "OMNISTREAM_ALERT_WEBHOOK_URL": "https://hooks.example/T0K3N"}, local_stack=False)
    text = redacted(f"p@ss-word {'w' * 20} https://hooks.example/T0K3N")
    assert "p@ss-word" not in text and "w" * 20 not in text and "T0K3N" not in text
