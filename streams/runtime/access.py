"""Who may use a worker's web port.

The port binds `OMNISTREAM_WEB_HOST` (default 127.0.0.1: only this machine). Binding anything
else opens it to the network, which a worker refuses to do without `OMNISTREAM_WEB_TOKEN`: then
every path but `/health` and `/metrics` (what probes and Prometheus scrape) needs
`Authorization: Bearer <token>`. A browser opens the dashboard once with `?token=<token>`; the
answer sets an HttpOnly, SameSite=Strict cookie that its own requests carry from then on. Bodies
are bounded (`MAX_BODY`); faust's built-in views (tables, router, graph, stats) are off.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import SecretStr

from streams.config import ConfigError

OPEN_PATHS = frozenset({"/health", "/metrics"})
TOKEN_COOKIE = "omnistream_token"
MAX_BODY = 1 << 20  # bytes of a request body; /api/predict's 1,000 items fit in a tenth of it


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(host: str, token: SecretStr | None) -> None:
    """Refuse to open the web port beyond this machine without a token."""
    if not loopback(host) and token is None:
        raise ConfigError(
            f"OMNISTREAM_WEB_HOST={host} opens the worker's web port beyond this machine: "
            "set OMNISTREAM_WEB_TOKEN (a long random secret) so that only who holds it gets in")


def allowed(token: str, authorization: str | None, cookie: str | None, query: str | None) -> bool:
    """True when the request names the token (header, cookie or ?token=), compared in
    constant time."""
    want = token.encode()
    offered = [cookie, query]
    if authorization and authorization.startswith("Bearer "):
        offered.append(authorization[len("Bearer "):])
    return any(o is not None and hmac.compare_digest(o.encode(), want) for o in offered)


Handler = Callable[[Any], Awaitable[Any]]


def middleware(token: SecretStr | None) -> Any:
    """An aiohttp middleware enforcing the token (none: the port is loopback-only)."""
    from aiohttp import web

    @web.middleware
    async def bearer_token(request: Any, handler: Handler) -> Any:
        if token is None or request.path in OPEN_PATHS:
            return await handler(request)
        secret = token.get_secret_value()
        query = request.query.get("token")
        if not allowed(secret, request.headers.get("Authorization"), request.cookies.get(TOKEN_COOKIE),
                       query):
            return web.json_response({"error": "a bearer token is required (OMNISTREAM_WEB_TOKEN)"},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
        response = await handler(request)
        if query is not None and hmac.compare_digest(query.encode(), secret.encode()):
            response.set_cookie(TOKEN_COOKIE, secret, httponly=True, samesite="Strict", path="/")
        return response

    return bearer_token


def web_options(host: str, token: SecretStr | None) -> dict[str, Any]:
    """The faust app settings for its web server."""
    check(host, token)
    return {
        "web_bind": host,
        "web_host": host,
        "web_router_enabled": False,
        "web_tables_enabled": False,
        "web_graph_enabled": False,
        "web_stats_enabled": False,
        "web_application_options": {"middlewares": [middleware(token)], "client_max_size": MAX_BODY},
    }
