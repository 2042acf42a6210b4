"""Actuator that acts on nothing: records each scale request (in memory and optionally as JSON lines on disk).

Used to watch what the controller would do against a live platform before giving it write access, and as the
actuator of replays, where the caller supplies the (simulated) time through `clock`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .base import Actuator, FunctionStatus, ScaleOutcome


@dataclass(frozen=True)
class DryRunRecord:
    t: float
    function: str
    namespace: str
    replicas: int


class DryRunActuator(Actuator):
    """Records scale requests instead of applying them; lists the functions it was given with `set_functions`."""

    kind = "dryrun"

    def __init__(self, record_path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.record_path = Path(record_path) if record_path is not None else None
        self.clock = clock
        self.records: list[DryRunRecord] = []
        self._functions: list[FunctionStatus] = []

    def set_functions(self, functions: Iterable[FunctionStatus]) -> None:
        self._functions = list(functions)

    async def list_functions(self) -> list[FunctionStatus]:
        return list(self._functions)

    async def scale(self, function: str, namespace: str, replicas: int) -> ScaleOutcome:
        record = DryRunRecord(t=float(self.clock()), function=function, namespace=namespace, replicas=replicas)
        self.records.append(record)
        if self.record_path is not None:
            # Append and close per record: lines are tiny and rare, and a crash then loses at most the current one.
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            with self.record_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(asdict(record)) + "\n")
        return ScaleOutcome(
            function=function, namespace=namespace, requested=replicas, applied=None,
            note=f"dry run: would set {replicas}",
        )
