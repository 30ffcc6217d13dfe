"""Prometheus exporter for the batch jobs behind a Bifrost LLM gateway."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The one place the version is written is pyproject.toml; the installed metadata carries it here.
    __version__ = version("bifrost-batch-exporter")
except PackageNotFoundError:  # a source tree on sys.path without `pip install`
    __version__ = "0.0.0+unknown"
