"""Fuzz targets for the sandboxed readers (run by fuzz/run.py), and the oracles they share with the property tests."""
