"""A real redis-server on a free loopback port, owned by one test (started, stopped, restarted)."""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """SIGTERM a child still running and wait for it; SIGKILL it if it has not exited within `timeout_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class RedisServer:
    """`persistent=True` writes an fsync-always append-only file, so a restart keeps acknowledged writes."""

    def __init__(self, workdir: Path, persistent: bool = True, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH (scripts/ensure-test-tools installs it)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.workdir), "--appendonly", "yes" if self.persistent else "no",
                "--appendfsync", "always", "--loglevel", "notice", "--protected-mode", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # Wait for the server's own readiness line rather than polling or sleeping.
        # Wait for the server's own readiness line rather than polling or sleeping. Raw reads on the
        # descriptor: a buffered readline could hold the line while select() sees nothing new.
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                if b"Ready to accept connections" in buf:
                    self._drain()
                    return
        finally:
            sel.close()
        self.stop()
        raise RuntimeError("redis-server did not start:\n" + buf.decode(errors="replace")[-3000:])

    def _drain(self) -> None:
        # Keep reading its output so a full pipe never blocks the server.
        import threading

        proc = self.proc

        def run() -> None:
            try:
                while os.read(proc.stdout.fileno(), 65536):
                    pass
            except (OSError, ValueError):
                pass

        threading.Thread(target=run, daemon=True).start()

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        """Crash the server (SIGKILL): only what was fsynced survives."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
