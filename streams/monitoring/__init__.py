"""Faust wiring of metric windows: the aggregator, its table and sink, the worker's own metrics."""
