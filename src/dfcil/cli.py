"""Command line: ``dfcil run``, ``dfcil methods``.

Every user error (bad config, data, run directory) ends with one line on stderr,
``dfcil: error: <what is wrong>``, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dfcil.errors import DfcilError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfcil", description="Data-free class-incremental learning.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run (or resume) an experiment")
    run.add_argument("config", nargs="?", type=Path, help="experiment YAML file")
    run.add_argument("-o", "--output", type=Path, help="run directory (default: runs/<config>-<method>-...)")
    run.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key by its dotted path, e.g. --set train.epochs=3 (repeatable)",
    )
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")

    commands.add_parser("methods", help="list the registered methods")
    return parser


def _run(args: argparse.Namespace) -> int:
    from dfcil.run import execute, prepare

    if args.resume is not None and args.output is not None and args.output != args.resume:
        raise DfcilError("--resume RUN_DIR and -o name different directories")
    config, run_dir, checkpoint = prepare(args.config, args.output, args.overrides, args.resume)
    metrics = execute(config, run_dir, checkpoint)
    summary = {
        "run_dir": str(run_dir),
        "last_accuracy": metrics.get("last_accuracy"),
        "average_incremental_accuracy": metrics.get("average_incremental_accuracy"),
        "forgetting": metrics.get("forgetting"),
    }
    if "omega" in metrics:
        summary["omega"] = metrics["omega"]
    print(json.dumps(summary))
    return 0


def _methods() -> int:
    from dfcil.methods import METHODS

    width = max(len(name) for name in METHODS)
    for name, cls in METHODS.items():
        print(f"{name:<{width}}  {cls.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dfcil`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        return _methods()
    except DfcilError as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"dfcil: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dfcil: interrupted; continue with `dfcil run --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
