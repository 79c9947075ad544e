"""Faust wiring of code generation: fan-out, render pool, assembler, their topics, tables and sinks."""
