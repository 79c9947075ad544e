"""The web port's access rules (pure)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from streams.config import ConfigError
from streams.runtime.access import allowed, check, loopback


def test_loopback_addresses():
    assert all(loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))


def test_only_a_loopback_bind_goes_without_a_token():
    check("127.0.0.1", None)
    check("0.0.0.0", SecretStr("x" * 16))
    with pytest.raises(ConfigError, match="OMNISTREAM_WEB_TOKEN"):
        check("0.0.0.0", None)


def test_the_token_is_taken_from_the_header_the_cookie_or_the_query():
    token = "s3cret-" * 4
    assert allowed(token, f"Bearer {token}", None, None)
    assert allowed(token, None, token, None)
    assert allowed(token, None, None, token)
    assert not allowed(token, None, None, None)
    assert not allowed(token, token, None, None)  # no "Bearer " scheme
    assert not allowed(token, f"Bearer {token}x", "nope", token[:-1])
