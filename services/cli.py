"""`ztmesh`: the one command line of the mesh.

`ztmesh up` runs the four services locally, `ztmesh serve <svc>` one of them, `ztmesh certs init`
creates a dev PKI; each service adds its own subcommands (`ztmesh keys …`) from `ztmesh.<svc>.cli`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from ztmesh.mesh.errors import MeshError
from ztmesh.mesh.topology import SERVICES

# Services whose `cli` module adds subcommands, and the other command groups of the mesh.
_SUBCOMMAND_MODULES = ("ztmesh.keys.cli", "ztmesh.audit.cli", "ztmesh.plugins.cli", "ztmesh.policy.cli")


def _cmd_certs_init(args: argparse.Namespace) -> int:
    from ztmesh.mesh.certs import init_dev_pki

    try:
        written = init_dev_pki(args.dir, args.trust_domain, args.namespace, force=args.force)
    except FileExistsError as exc:
        print(f"ztmesh certs init: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} files to {args.dir} (trust domain {args.trust_domain})")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from ztmesh.mesh.launch import serve

    return serve(args.service)


def _cmd_up(args: argparse.Namespace) -> int:
    from ztmesh.mesh.launch import up

    return up()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ztmesh", description="Zero Trust policy decision point")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run all four services locally over mTLS (embedded defaults)")
    up.set_defaults(func=_cmd_up)

    serve = commands.add_parser("serve", help="run one service")
    serve.add_argument("service", choices=list(SERVICES))
    serve.set_defaults(func=_cmd_serve)

    certs = commands.add_parser("certs", help="development certificates")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = certs_commands.add_parser("init", help="create a dev CA and a certificate per workload")
    init.add_argument("--dir", type=Path, default=Path("certs"), help="output folder (default ./certs)")
    init.add_argument("--trust-domain", default="ztmesh.local", help="SPIFFE trust domain")
    init.add_argument("--namespace", default="ztmesh", help="namespace in the SPIFFE IDs")
    init.add_argument("--force", action="store_true", help="replace an existing dev PKI")
    init.set_defaults(func=_cmd_certs_init)

    for module_name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MeshError as exc:
        # Configuration and certificate problems: one clear line, no traceback.
        print(f"ztmesh: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
