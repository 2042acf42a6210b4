"""`python -m prewarmer` runs the command line, like the `prewarmer` console script."""

import sys

from prewarmer.cli import main

sys.exit(main())
