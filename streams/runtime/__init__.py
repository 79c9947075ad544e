"""The Faust runtime and the machinery every feature reuses: the app factory, topics and tables,
the checkpointed processing path, the PostgreSQL sink, the dead-letter path, changelog replicas,
faust patches and the worker's entry point."""
