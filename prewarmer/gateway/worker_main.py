"""The worker process: one instance of one function, `python -m prewarmer.gateway.worker_main --handler DIR`.

It imports `DIR/handler.py` (the OpenFaaS python3-http template layout: `def handle(event, context)`),
so the cold start is the real interpreter start plus the handler's own imports and initialization,
then tells the gateway it is ready and serves requests one at a time until its stdin closes.

Protocol (binary, over the process's stdin/stdout pipes), every message is one frame:

    frame = u32 meta_len | u32 body_len | meta (UTF-8 JSON object) | body (raw bytes), big-endian

- worker -> gateway, once: `{"ready": true, "pid": P, "import_ms": T}` (empty body) after the handler
  imported, or `{"fatal": "traceback"}` and exit 1 if the import failed;
- gateway -> worker, per request: `{"method", "path", "query", "headers": {name: value}}` + request body;
- worker -> gateway, per request: `{"status", "headers", "duration_ms", "error"?}` + response body.

The body travels raw (no base64/JSON escaping), so a frame costs one JSON encode of a few headers.
Before importing the handler, the protocol moves to private descriptors and fd 1 is pointed at
stderr (fd 0 at /dev/null): the handler's prints, and even C-level writes to stdout, cannot corrupt
the protocol. A handler exception answers 500 with the error text; the worker stays alive. The
worker exits on EOF of its stdin, which also happens when the gateway dies, so workers never outlive
their gateway for long.

Only the standard library is imported here, to keep the worker's own start-up cost small.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import struct
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any, BinaryIO

HEADER = struct.Struct(">II")
MAX_META = 1 << 20
MAX_BODY = 1 << 30


class ProtocolError(Exception):
    """A malformed frame on the pipe."""


def encode_frame(meta: dict, body: bytes = b"") -> bytes:
    m = json.dumps(meta, separators=(",", ":")).encode()
    return HEADER.pack(len(m), len(body)) + m + body


def decode_header(raw: bytes) -> tuple[int, int]:
    meta_len, body_len = HEADER.unpack(raw)
    if meta_len > MAX_META or body_len > MAX_BODY:
        raise ProtocolError(f"frame too large: meta {meta_len} B, body {body_len} B")
    return meta_len, body_len


def _read_exactly(f: BinaryIO, n: int) -> bytes | None:
    """n bytes, or None on a clean EOF before the first byte; ProtocolError on EOF inside a frame."""
    chunks, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            if got == 0:
                return None
            raise ProtocolError(f"EOF after {got} of {n} bytes")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_frame(f: BinaryIO) -> tuple[dict, bytes] | None:
    raw = _read_exactly(f, HEADER.size)
    if raw is None:
        return None
    meta_len, body_len = decode_header(raw)
    data = _read_exactly(f, meta_len + body_len) if meta_len + body_len else b""
    if data is None:
        raise ProtocolError("EOF inside a frame")
    return json.loads(data[:meta_len]), data[meta_len:]


class Headers(dict):
    """Request headers, looked up case-insensitively like the template's (werkzeug) headers."""

    def __init__(self, items: dict[str, str]) -> None:
        super().__init__({k.lower(): v for k, v in items.items()})

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


class Event:
    """What the python3-http template passes as `event`: body (bytes), headers, method, query, path."""

    __slots__ = ("body", "headers", "method", "query", "path")

    def __init__(self, meta: dict, body: bytes) -> None:
        from urllib.parse import parse_qsl

        self.body = body
        self.headers = Headers(meta.get("headers") or {})
        self.method = meta.get("method", "GET")
        self.path = meta.get("path", "/")
        # Like werkzeug's MultiDict.get: the first value of a repeated parameter.
        query: dict[str, str] = {}
        for k, v in parse_qsl(meta.get("query", ""), keep_blank_values=True):
            query.setdefault(k, v)
        self.query = query


class Context:
    """What the template passes as `context`; `hostname` is the instance id (a pod name on Kubernetes)."""

    __slots__ = ("hostname",)

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname


def format_response(res: Any) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) from what `handle` returned: the template's dict, or a bare body."""
    if isinstance(res, dict) and ({"statusCode", "body", "headers"} & res.keys()):
        status, body, headers = res.get("statusCode", 200), res.get("body"), dict(res.get("headers") or {})
    else:
        status, body, headers = 200, res, {}
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"statusCode must be an integer in 100..599, got {status!r}")
    headers = {str(k): str(v) for k, v in headers.items()}
    if body is None:
        data = b""
    elif isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = json.dumps(body).encode()
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
    return status, headers, data


def import_handler(handler_dir: Path) -> types.ModuleType:
    """Import DIR/handler.py as `function.handler`, as the template does, so relative imports work too."""
    handler_dir = handler_dir.resolve()
    sys.path.insert(0, str(handler_dir))
    pkg = types.ModuleType("function")
    pkg.__path__ = [str(handler_dir)]
    sys.modules["function"] = pkg
    mod = importlib.import_module("function.handler")
    if not callable(getattr(mod, "handle", None)):
        raise AttributeError(f"{handler_dir / 'handler.py'} has no handle(event, context) function")
    return mod


def serve(handler_dir: Path, proto_in: BinaryIO, proto_out: BinaryIO) -> int:
    t0 = time.perf_counter()
    try:
        mod = import_handler(handler_dir)
    except BaseException:  # noqa: B036 - whatever the import raises (even SystemExit), the gateway must hear it
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        proto_out.write(encode_frame({"fatal": tb}))
        proto_out.flush()
        return 1
    import_ms = (time.perf_counter() - t0) * 1000
    proto_out.write(encode_frame({"ready": True, "pid": os.getpid(), "import_ms": import_ms}))
    proto_out.flush()
    ctx = Context(os.environ.get("PREWARMER_WORKER_ID") or os.uname().nodename)
    handle = mod.handle
    while True:
        frame = read_frame(proto_in)
        if frame is None:
            return 0  # stdin closed: the gateway released this worker (or died)
        meta, body = frame
        t = time.perf_counter()
        error = None
        try:
            status, headers, data = format_response(handle(Event(meta, body), ctx))
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            error = f"{type(e).__name__}: {e}"
            status, headers, data = 500, {"Content-Type": "text/plain; charset=utf-8"}, error.encode()
        duration_ms = (time.perf_counter() - t) * 1000
        out = {"status": status, "headers": headers, "duration_ms": duration_ms}
        if error is not None:
            out["error"] = error
        proto_out.write(encode_frame(out, data))
        proto_out.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prewarmer.gateway.worker_main", description=__doc__.split("\n")[0])
    ap.add_argument("--handler", required=True, type=Path, help="function folder holding handler.py")
    args = ap.parse_args(argv)
    # Move the protocol off fds 0/1 before any handler code runs, then point fd 1 at stderr.
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        return serve(args.handler, proto_in, proto_out)
    except (BrokenPipeError, ProtocolError) as e:
        print(f"worker: protocol ended: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
