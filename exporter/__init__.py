"""Prometheus exporter for the batch jobs behind a Bifrost LLM gateway."""

# The one place the version is written: pyproject.toml reads it from here (setuptools' dynamic `attr`, parsed
# without importing), so a checkout, an editable install, the wheel and the image cannot disagree. Revision,
# branch and build date are build facts, not source: see exporter/version.py.
__version__ = "0.2.0"
