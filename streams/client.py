"""The public import path of the Python client: `from streams.client import OmnistreamClient`
(it lives in streams/interfaces/client.py)."""

from streams.interfaces.client import OmnistreamClient

__all__ = ["OmnistreamClient"]
