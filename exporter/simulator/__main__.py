"""Entry point for `python -m exporter.simulator`."""

import sys

from .cli import main

sys.exit(main())
