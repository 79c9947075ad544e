"""Faust wiring of the mixin models and pattern feedback, and `omnistream replay`."""
