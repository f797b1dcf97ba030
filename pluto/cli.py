"""The `pluto` console command.

Each area of pluto owns its subcommands and registers them here through a
`register(subparsers)` function, so this file stays a thin dispatcher:

- ``pluto.cost.commands``: profile, predict, validate, table
- ``pluto.materialize.commands``: export
- ``pluto.sweep``: sweep
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pluto.errors import PlutoError

COMMAND_MODULES = (
    "pluto.cost.commands",
    "pluto.materialize.commands",
    "pluto.sweep",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pluto", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    train = subparsers.add_parser("train", help="run a Hydra training/compression job (same as python -m pluto.train)")
    train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. recipe=fmnist_cpu_int8 constraints.latency_ms=0.5")
    train.set_defaults(func=_run_train)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def _run_train(args: argparse.Namespace) -> int:
    from pluto import train

    sys.argv = ["pluto.train", *args.overrides]
    train.main()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PlutoError as exc:
        print(f"pluto {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
