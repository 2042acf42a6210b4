"""The processes of a load-test run: each child in its own session with its output copied to a log file
(`Proc`), everything one run started (`Processes`), stopped in reverse order, then a sweep for any
process whose environment carries the run's marker (`marked_pids`), so that nothing outlives the command.
Signal handling: SIGTERM / SIGHUP unwind like Ctrl-C (`terminate_as_interrupt`), and signals wait while
the processes are being stopped.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prewarmer.load.errors import LoadTestError

MARKER_ENV = "PREWARMER_LOADTEST_RUN"


class Proc:
    """A child process in its own session, output (stdout + stderr) copied to a log file by a thread."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str], cwd: str | None = None,
                 patterns: tuple[re.Pattern[str], ...] = ()) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.matches: dict[re.Pattern[str], re.Match[str]] = {}
        self._patterns = patterns
        self._cond = threading.Condition()
        try:
            # A session of its own: Ctrl-C in the terminal reaches us only, and we stop children in order.
            self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        except FileNotFoundError:
            raise LoadTestError(f"{name}: {argv[0]} not found") from None
        self._thread = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with open(self.log_path, "ab") as log:
            for raw in iter(self.popen.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                with self._cond:
                    self.tail.append(line)
                    for pat in self._patterns:
                        if pat not in self.matches and (m := pat.search(line)):
                            self.matches[pat] = m
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def last_line(self) -> str:
        lines = [ln for ln in self.tail if ln.strip()]
        return lines[-1][-300:] if lines else "(no output)"

    def failure(self, what: str) -> LoadTestError:
        rc = self.popen.poll()
        status = f"exited with code {rc}" if rc is not None else "still running"
        return LoadTestError(f"{self.name} {what} ({status}): {self.last_line()} [log: {self.log_path}]")

    def wait_for(self, pattern: re.Pattern[str], timeout: float, what: str) -> re.Match[str]:
        """The first output line matching `pattern`; LoadTestError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while pattern not in self.matches:
                left = deadline - time.monotonic()
                if left <= 0 or (not self.running() and not self._thread.is_alive()):
                    raise self.failure(what)
                self._cond.wait(min(left, 0.2))
            return self.matches[pattern]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its process group, SIGKILL after `timeout`."""
        if self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        # The group may still hold something a child forked; it has no business outliving the run.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._thread.join(timeout=5)


def marked_pids(run_id: str) -> list[int]:
    """Processes (other than this one) whose environment carries a marker starting with `run_id`
    (markers are `<pid>-<random>-<label>`, so a prefix finds every run of one command)."""
    needle = f"{MARKER_ENV}={run_id}".encode()
    out = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(var.startswith(needle) for var in env.split(b"\0")):
            out.append(int(entry.name))
    return out


class Processes:
    """Everything one run started; `stop_all` stops them in reverse order and sweeps stragglers."""

    def __init__(self, run_id: str, logdir: Path) -> None:
        self.run_id, self.logdir = run_id, logdir
        self.env = {**os.environ, MARKER_ENV: run_id, "PYTHONUNBUFFERED": "1"}
        root = str(Path(__file__).resolve().parents[2])
        # Children import this very package, installed or not.
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], patterns: tuple[re.Pattern[str], ...] = (),
              cwd: str | None = None) -> Proc:
        proc = Proc(name, argv, self.logdir / f"{name}.log", self.env, cwd=cwd, patterns=patterns)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> list[int]:
        """Returns the pids that had to be swept up after the orderly stop (normally none)."""
        with _signals_deferred():
            return self._stop_all()

    def _stop_all(self) -> list[int]:
        for proc in reversed(self.procs):
            proc.stop()
        leftover = marked_pids(self.run_id)
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while marked_pids(self.run_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        return leftover


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """A second Ctrl-C must not cut the clean-up short: signals wait until it is over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    got: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _f: got.append(signum)) for sig in sigs}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        if got:
            raise KeyboardInterrupt(signal.Signals(got[0]).name)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM / SIGHUP unwind like Ctrl-C, so that the finally blocks stop every process."""
    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
