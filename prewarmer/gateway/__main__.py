"""`python -m prewarmer.gateway [options]`: the gateway without the main `prewarmer` command."""

import sys

from prewarmer.gateway.cli import main

sys.exit(main())
