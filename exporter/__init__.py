"""Prometheus exporter for the batch jobs behind a Bifrost LLM gateway."""

__version__ = "0.1.0"
