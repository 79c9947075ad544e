"""Faust wiring of the alert engine: its inbox, table, sink, notifications."""
