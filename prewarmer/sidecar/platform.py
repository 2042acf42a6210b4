"""Which actuator the sidecar drives, built from its flags; and the dry-run wrapper that only reads."""

from __future__ import annotations

import argparse
from pathlib import Path

from prewarmer.actuators import Actuator, FunctionStatus, ScaleOutcome, make_actuator


class ReadOnlyActuator(Actuator):
    """--dry-run: reads the platform through the real actuator and sends no scale request."""

    kind = "dry-run"

    def __init__(self, reader: Actuator | None) -> None:
        self.reader = reader

    async def start(self) -> None:
        if self.reader:
            await self.reader.start()

    async def close(self) -> None:
        if self.reader:
            await self.reader.close()

    async def list_functions(self) -> list[FunctionStatus]:
        return await self.reader.list_functions() if self.reader else []

    async def scale(self, function: str, namespace: str, replicas: int) -> ScaleOutcome:
        # Recorded by the sidecar (--record), like every decision; nothing is sent.
        return ScaleOutcome(function=function, namespace=namespace, requested=replicas, applied=None,
                            note=f"dry run: would set {replicas}")


def _read_secret(path: str | None, default_path: str) -> str | None:
    p = Path(path or default_path)
    if not p.exists():
        if path:
            raise ValueError(f"--basic-auth-password-file: {p} does not exist")
        return None
    return p.read_text().strip()


def build_actuator(args: argparse.Namespace) -> Actuator | None:
    kind = args.kind
    if kind == "openfaas":
        if not args.gateway:
            if args.dry_run:
                return None
            raise ValueError("--gateway URL is required for --kind openfaas (or PREWARMER_GATEWAY)")
        user = args.basic_auth_user or _read_secret(None, "/var/secrets/basic-auth-user") or "admin"
        password = _read_secret(args.basic_auth_password_file, "/var/secrets/basic-auth-password") or ""
        opts = {"gateway_url": args.gateway, "username": user, "password": password,
                "namespace": args.namespace or "openfaas-fn", "edition": args.edition}
    else:
        if not args.namespace:
            raise ValueError(f"--namespace is required for --kind {kind}")
        opts = {"namespace": args.namespace}
        if kind == "knative":
            opts["target"] = args.knative_target
        elif args.label_selector:
            opts["label_selector"] = args.label_selector
    return make_actuator(kind, max_replicas=args.max_replicas, **opts)
