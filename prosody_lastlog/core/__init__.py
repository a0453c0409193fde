"""Values and counting rules: no I/O, no clock; imports nothing else of the project."""
