"""`python -m exporter` is the same program as the `bifrost-batch-exporter` console script."""

import sys

from .cli import main

sys.exit(main())
