"""Grafana dashboards for prosody-lastlog's metrics, written by generate.py."""
