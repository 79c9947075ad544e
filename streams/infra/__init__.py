"""Local infrastructure: a real Kafka broker (KRaft, jars from Maven Central) and PostgreSQL."""

from streams.infra.errors import InfraError

__all__ = ["InfraError"]
