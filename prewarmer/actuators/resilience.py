"""Safety wrapper around any actuator: per-function replica caps, retries with backoff, and a circuit breaker.

The controller asks for a setting every tick; this layer makes sure a sick platform sees neither absurd requests
nor a retry storm, and that the controller always gets an answer (a ScaleOutcome saying what happened) instead of
an exception — except for refused credentials, which are re-raised because nothing but a human can fix them.

Breaker: closed -> open after `breaker_failures` consecutive failed requests (each failed attempt counts, so the
retry loop itself stops as soon as the platform is judged down) -> half-open once `breaker_reset_s` have passed,
when exactly one trial request goes through: success closes the breaker, failure opens it again. Any definite
answer from the platform (success, 404, 400, 401) counts as "reachable" and resets the failure count.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .base import Actuator, ActuatorAuthError, ActuatorError, ActuatorNotFound, FunctionStatus, ScaleOutcome

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitOpenError(ActuatorError):
    """Raised by list_functions while the breaker is open: the platform is not being called."""

    retryable = False


class _Open(Exception):
    """Internal: the breaker refused to let a call through."""


class ResilientActuator(Actuator):
    """Wraps `inner`; see the module docstring for the rules."""

    def __init__(
        self,
        inner: Actuator,
        max_replicas: int | Mapping[str, int],
        retries: int = 3,
        backoff_s: float = 0.2,
        backoff_max_s: float = 5.0,
        breaker_failures: int = 5,
        breaker_reset_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """`max_replicas` is one cap for all, or a mapping looked up by "namespace/function", then "function",
        then "*"; a function matching none of them is not capped."""
        if retries < 0 or breaker_failures < 1:
            raise ValueError("retries must be >= 0 and breaker_failures >= 1")
        caps = [max_replicas] if isinstance(max_replicas, int) else list(max_replicas.values())
        if any(c < 0 for c in caps):
            raise ValueError(f"max_replicas must not be negative: {max_replicas!r}")
        self.inner = inner
        self.kind = inner.kind
        self.max_replicas = max_replicas if isinstance(max_replicas, int) else dict(max_replicas)
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.breaker_failures = breaker_failures
        self.breaker_reset_s = breaker_reset_s
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.last_applied: dict[tuple[str, str], int] = {}
        # What we last sent per function: with CE clamping, asking 0 applies 1, and asking 0 again is still a no-op.
        self._last_sent: dict[tuple[str, str], int] = {}
        self._state = CLOSED
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._counters = {"attempts": 0, "failures": 0, "retries": 0, "opened": 0, "skipped_unchanged": 0,
                          "refused_open": 0}

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    # --- observability ---------------------------------------------------------------------------------------

    @property
    def breaker_state(self) -> str:
        return self._state

    def state(self) -> dict[str, Any]:
        """A snapshot for metrics and status pages; `last_applied` is keyed by (namespace, function)."""
        return {
            "kind": self.kind,
            "breaker": self._state,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "opened_at": self._opened_at,
            "last_applied": dict(self.last_applied),
            **self._counters,
        }

    # --- the breaker -----------------------------------------------------------------------------------------

    def _admit(self) -> bool:
        """Let one call through or raise _Open. Returns True when the call is the half-open trial."""
        if self._state == OPEN:
            assert self._opened_at is not None
            if self.clock() - self._opened_at < self.breaker_reset_s:
                raise _Open
            self._state = HALF_OPEN
        if self._state == HALF_OPEN:
            if self._trial_in_flight:
                raise _Open  # one trial at a time; concurrent callers keep their last setting meanwhile
            self._trial_in_flight = True
            return True
        return False

    def _on_reachable(self) -> None:
        self.consecutive_failures = 0
        self._state = CLOSED
        self._opened_at = None

    def _on_failure(self, exc: ActuatorError, trial: bool) -> None:
        self._counters["failures"] += 1
        self.consecutive_failures += 1
        self.last_error = str(exc)
        if trial or self.consecutive_failures >= self.breaker_failures:
            if self._state != OPEN:
                self._counters["opened"] += 1
            self._state = OPEN
            self._opened_at = self.clock()

    def _delay(self, attempt: int, exc: ActuatorError) -> float:
        base = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        # "Equal jitter": never less than half the backoff, so retries from many sidecars spread out but still wait.
        delay = base / 2 + self.rng.uniform(0, base / 2)
        if exc.retry_after_s is not None:
            delay = max(delay, exc.retry_after_s)
        return delay

    async def _run(self, op: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            trial = self._admit()
            try:
                self._counters["attempts"] += 1
                result = await op()
            except ActuatorError as exc:
                if not exc.retryable:
                    self._on_reachable()  # the platform answered; the problem is this request, not its health
                    raise
                self._on_failure(exc, trial)
                attempt += 1
                if self._state == OPEN or attempt > self.retries:
                    raise
                delay = self._delay(attempt, exc)
                if delay > self.backoff_max_s:
                    raise  # the server asks us to wait longer than we may: the next control tick will try again
            else:
                self._on_reachable()
                return result
            finally:
                if trial:
                    self._trial_in_flight = False
            self._counters["retries"] += 1
            await self.sleep(delay)

    # --- the actuator API ------------------------------------------------------------------------------------

    def cap_for(self, function: str, namespace: str) -> int | None:
        if isinstance(self.max_replicas, int):
            return self.max_replicas
        for key in (f"{namespace}/{function}", function, "*"):
            if key in self.max_replicas:
                return self.max_replicas[key]
        return None

    def _keeping(self, key: tuple[str, str]) -> str:
        last = self.last_applied.get(key)
        return f"keeping last setting {last}" if last is not None else "no setting applied yet"

    async def list_functions(self) -> list[FunctionStatus]:
        try:
            return await self._run(self.inner.list_functions)
        except _Open:
            self._counters["refused_open"] += 1
            raise CircuitOpenError(f"circuit open after repeated failures: {self.last_error}") from None

    async def scale(self, function: str, namespace: str, replicas: int) -> ScaleOutcome:
        key = (namespace, function)
        notes: list[str] = []
        target = replicas
        if target < 0:
            target = 0
            notes.append(f"requested {replicas}, minimum is 0")
        cap = self.cap_for(function, namespace)
        if cap is not None and target > cap:
            target = cap
            notes.append(f"requested {replicas}, max for {function} is {cap}")
        if key in self.last_applied and target in (self.last_applied[key], self._last_sent.get(key)):
            self._counters["skipped_unchanged"] += 1
            return ScaleOutcome(function, namespace, replicas, None, "unchanged")
        try:
            outcome = await self._run(lambda: self.inner.scale(function, namespace, target))
        except _Open:
            self._counters["refused_open"] += 1
            return ScaleOutcome(function, namespace, replicas, None, f"circuit open: {self._keeping(key)}")
        except ActuatorAuthError:
            raise
        except ActuatorNotFound as exc:
            return ScaleOutcome(function, namespace, replicas, None, f"not found: {exc}")
        except ActuatorError as exc:
            if exc.retryable and self._state == OPEN:
                why = f"circuit opened after {self.consecutive_failures} consecutive failures"
            elif exc.retryable:
                why = "failed after retries"
            else:
                why = "rejected"
            return ScaleOutcome(function, namespace, replicas, None, f"{why}: {exc}; {self._keeping(key)}")
        if outcome.applied is not None:
            self.last_applied[key] = outcome.applied
            self._last_sent[key] = target
        notes += [outcome.note] if outcome.note else []
        return ScaleOutcome(function, namespace, replicas, outcome.applied, "; ".join(notes))
