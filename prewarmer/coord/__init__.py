"""Coordination under a shared memory budget: agents announce and bid, a coordinator awards capacity."""
