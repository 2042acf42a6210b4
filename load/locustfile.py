"""Open-loop trace replay against the gateway: `locust -f load/locustfile.py --host http://127.0.0.1:8080`.

Thin on purpose: the logic lives in `prewarmer.load.openloop` (so `prewarmer loadtest` runs the same
code from the installed package). Options: `--schedule PATH` (from `prewarmer.load.schedule`; default
the built-in 60 s synthetic pattern on echo/cpu/io), `--results PATH` (every latency, per function).
"""

import os
import sys

# Run from a checkout without installing: make the repository's package importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prewarmer.load.openloop import OpenLoopUser  # noqa: E402,F401  (Locust collects User classes by name)
