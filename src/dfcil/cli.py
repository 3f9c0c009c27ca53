"""Command line: ``dfcil run``, ``dfcil methods`` (experiments) and ``dfcil learn``,
``dfcil predict``, ``dfcil evaluate`` (a deployed model and your own image folders).

Every user error (bad config, data, run directory) ends with one line on stderr,
``dfcil: error: <what is wrong>``, and exit status 2. The library's messages (run directory,
epochs, evaluations, warnings) are log records of the ``dfcil`` logger, which :func:`main` shows
on stderr (:func:`dfcil.console.console_logging`); results go to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dfcil.console import console_logging
from dfcil.errors import DfcilError
from dfcil.rundir import RunDir

logger = logging.getLogger(__name__)


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
    run.add_argument(
        "--first-task-from", type=Path, metavar="RUN_DIR",
        help="start at task 2 from the completed first task of another run that trained it identically",
    )

    commands.add_parser("methods", help="list the registered methods")

    suite = commands.add_parser("suite", help="run a grid of experiments (skips complete runs, resumes interrupted ones)")
    suite.add_argument("suite", type=Path, metavar="SUITE.yaml")
    suite.add_argument("-o", "--output", type=Path, metavar="DIR", help="where the runs go (default: runs/suites/<name>)")
    suite.add_argument("--jobs", type=int, default=1, help="experiments at once, as separate processes (default 1)")
    suite.add_argument("--dry-run", action="store_true", help="print the commands of the runs still to do")
    suite.add_argument("--only", action="append", default=[], metavar="PATTERN",
                       help="only the runs whose name matches this shell pattern, e.g. 'method-lwf__*' (repeatable); "
                            "the partner joint run of a selected run is trained first when it is not complete")
    suite.add_argument("--status", action="store_true",
                       help="print where every run stands (complete, interrupted or still running, new; last epoch, "
                            "minutes, A_N), the estimated time left (wall time at --jobs K) and start nothing")
    suite.add_argument("--adopt", type=Path, action="append", default=[], metavar="DIR",
                       help="copy complete runs under DIR whose config equals a suite run's instead of "
                            "running them (repeatable)")
    suite.add_argument("--first-task-from", type=Path, action="append", default=[], metavar="DIR",
                       help="run directories, or folders of them, whose completed first task a new run may start "
                            "from when it would train the identical one (checked; repeatable), e.g. another "
                            "suite's runs of the same seed")

    report = commands.add_parser("report", help="tables (md/csv/json), plots and an HTML page from run directories")
    report.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="run directories or folders holding them; where two hold a run of the same method, "
                             "protocol and seed, the one given first is used")
    report.add_argument("-o", "--output", type=Path, default=Path("report"), metavar="OUT",
                        help="where the report goes (default: report/)")
    report.add_argument("--published", type=Path, metavar="YAML", help="published figures (benchmarks/published.yaml)")
    report.add_argument("--reproducibility", type=Path, metavar="MD",
                        help="also write the reproducibility table (e.g. REPRODUCIBILITY.md) against --published")
    report.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="t-SNE maps of the domain gaps computed at once, in separate processes (most of a "
                             "report's time; default 1); the report is the same for any N")

    learn = commands.add_parser("learn", help="train a model on an image folder, or add its classes to a model")
    learn.add_argument("--data", type=Path, required=True, metavar="FOLDER",
                       help="FOLDER/<class>/<images> (or FOLDER/train/<class>/... + FOLDER/test/<class>/...)")
    learn.add_argument("--from", dest="base", type=Path, metavar="MODEL",
                       help="existing model file: add FOLDER's (new) classes to it, data-free")
    learn.add_argument("--method", help="learning method (default: the recipe's, rdfcil); see `dfcil methods`")
    learn.add_argument("-o", "--output", type=Path, metavar="MODEL_OUT",
                       help="model file to write (default: model.safetensors, or MODEL itself with --from, "
                            "its previous version kept as <MODEL>.step<k>.safetensors)")
    learn.add_argument("--config", type=Path, metavar="RECIPE", help="recipe YAML (default: dfcil/workflow/recipe.yaml)")
    learn.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. --set train.epochs=30 (repeatable)")
    learn.add_argument("--image-size", type=int, default=32, help="input size of a first model: 32, 64 or 224 (default 32)")
    learn.add_argument("--holdout", type=float, default=0.1,
                       help="fraction of each class held out for the step's accuracy when FOLDER has no test/ (default 0.1)")
    learn.add_argument("--strict", action="store_true", help="stop at an unreadable image instead of skipping it")
    learn.add_argument("--workdir", type=Path, help="keep the step's log, checkpoints and sample grids here")
    learn.add_argument("--force", action="store_true", help="replace an existing MODEL_OUT")
    learn.add_argument("--no-progress", action="store_true", help="no progress bars")

    predict = commands.add_parser("predict", help="class names and probabilities of images")
    predict.add_argument("model", type=Path, metavar="MODEL")
    predict.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    predict.add_argument("--json", action="store_true", help="print one JSON document")
    predict.add_argument("--strict", action="store_true", help="stop at an unreadable image instead of skipping it")

    evaluate = commands.add_parser("evaluate", help="accuracy of a model on a labelled image folder")
    evaluate.add_argument("model", type=Path, metavar="MODEL")
    evaluate.add_argument("--data", type=Path, required=True, metavar="FOLDER",
                          help="FOLDER/<class>/<images> (FOLDER/test/<class>/... when it has a test/)")
    evaluate.add_argument("--out", type=Path, metavar="DIR",
                          help="where evaluation.json and confusion.png go (default: evaluation-<model name>/)")
    evaluate.add_argument("--json", action="store_true", help="print the whole evaluation as JSON")
    evaluate.add_argument("--strict", action="store_true", help="stop at an unreadable image instead of skipping it")
    evaluate.add_argument("--force", action="store_true", help="replace an earlier evaluation in DIR")
    return parser


class Interrupted(Exception):
    """Ctrl-C during a command's long part; the message says how to continue."""


def _run(args: argparse.Namespace) -> int:
    from dfcil.distributed import Distributed
    from dfcil.first_task import recorded_identity as check_first_task_donor
    from dfcil.run import execute, prepare

    if args.resume is not None and args.output is not None and args.output != args.resume:
        raise DfcilError("--resume RUN_DIR and -o name different directories")
    if args.resume is not None and args.first_task_from is not None:
        raise DfcilError("--first-task-from starts a new run; a resumed run keeps the first task it has")
    experiment, run_dir, checkpoint = prepare(args.config, args.output, args.overrides, args.resume)
    if args.first_task_from is not None:
        check_first_task_donor(args.first_task_from)
    # under torchrun every process gets here before any of them writes (the group's rendezvous)
    dist = Distributed.from_environment(experiment.config.runtime.device)
    try:
        run_dir = dist.broadcast_object(run_dir)  # one directory even if the ranks' clocks differ
        try:
            metrics = execute(experiment, run_dir, checkpoint, dist, first_task_from=args.first_task_from)
        except KeyboardInterrupt:
            raise Interrupted(f"continue with `dfcil run --resume {run_dir}`") from None
        dist.barrier()  # every rank done before the group is torn down (gloo can abort otherwise)
    finally:
        dist.close()
    if not dist.is_main:
        return 0
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


def _suite(args: argparse.Namespace) -> int:
    from dfcil.suite import adopt_runs, execute_suite, load_suite, select_runs, status_table

    grid = load_suite(args.suite)
    suite = select_runs(grid, args.only)
    out = args.output or Path("runs") / "suites" / suite.name
    if args.status:
        print(status_table(suite, out, jobs=args.jobs, grid=grid))
        return 0
    if args.adopt and not args.dry_run:
        for name, source in adopt_runs(suite, out, args.adopt):
            logging.getLogger("dfcil.suite").info("adopted %s from %s", name, source)
    outcome = execute_suite(suite, out, jobs=args.jobs, dry_run=args.dry_run, grid=grid,
                            first_task_from=args.first_task_from)
    print(json.dumps({"suite": suite.name, "runs": len(suite.runs), "output": str(out),
                      **{key: len(names) for key, names in outcome.items()}, "failed_runs": outcome["failed"]}))
    return 1 if outcome["failed"] else 0


def _report(args: argparse.Namespace) -> int:
    from dfcil.report import build_report

    page = build_report(list(args.dirs), args.output, args.published, args.reproducibility, jobs=args.jobs)
    print(json.dumps({"report": str(page), "tables": [str(args.output / f"report.{x}") for x in ("md", "csv", "json")]}))
    return 0


def _learn(args: argparse.Namespace) -> int:
    from dfcil.atomic import unwritable_reason
    from dfcil.runlock import hold_output_lock
    from dfcil.workflow.api import Model, load
    from dfcil.workflow.learn import LearnOptions, learn_step

    base = load(args.base) if args.base is not None else None
    output = args.output or (args.base if args.base is not None else Path("model.safetensors"))
    same_as_base = args.base is not None and output.resolve() == args.base.resolve()
    if output.exists() and not same_as_base and not args.force:
        raise DfcilError(f"{output} already exists: choose another -o or pass --force to replace it")
    if output.exists() and output.is_dir():
        raise DfcilError(f"-o {output} is a folder; give a file name such as model.safetensors")
    kept = None
    if same_as_base and base is not None:
        kept = output.with_name(f"{output.stem}.step{len(base.info.history)}{output.suffix or '.safetensors'}")
        if kept.exists() and not args.force:
            raise DfcilError(f"{kept} already exists (the previous version would be kept there): move it away "
                             "or pass --force to replace it")
    # every output is checked before the step trains, so a bad one never costs the trained model
    for path in (output, kept):
        if path is not None:
            problem = unwritable_reason(path)
            if problem:
                raise DfcilError(f"cannot write {path}: {problem}")
    if args.workdir is not None:
        if args.workdir.exists() and (not args.workdir.is_dir() or any(args.workdir.iterdir())):
            raise DfcilError(f"--workdir {args.workdir} already exists and is not an empty folder: "
                             "choose a new one (it would be overwritten)")
        problem = unwritable_reason(RunDir(args.workdir).log)
        if problem:
            raise DfcilError(f"cannot write to --workdir {args.workdir}: {problem}")
    options = LearnOptions(method=args.method, recipe=args.config, overrides=args.overrides,
                           image_size=args.image_size, holdout=args.holdout, strict=args.strict,
                           workdir=args.workdir, progress=not args.no_progress)
    with hold_output_lock(output):
        try:
            result = learn_step(args.data, None if base is None else (base.info, base.network), options)
        except KeyboardInterrupt:
            raise Interrupted(f"nothing was written ({output} is written only when the step completes); "
                              "run the same command again") from None
        if kept is not None and base is not None:
            base.save(kept)
            logger.info("previous version kept as %s", kept)
        Model(result.info, result.model).save(output)
    print(json.dumps({"model": str(output), "classes": len(result.info.class_names), "step": result.step.step,
                      "added": result.step.classes, "method": result.step.method,
                      "held_out_accuracy": result.step.metrics["held_out_accuracy"]}))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from dfcil.workflow.api import load

    model = load(args.model)
    predictions = model.predict(args.images, top=args.top, strict=args.strict)
    if not predictions:  # every file was unreadable (each one named on stderr above)
        raise DfcilError("no image could be read: nothing to predict")
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=1))
    else:
        for p in predictions:
            top = ", ".join(f"{c} {100 * q:.1f}%" for c, q in zip(p.classes, p.probabilities))
            print(f"{p.path}: {top}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from dfcil.atomic import unwritable_reason, write_json
    from dfcil.workflow.api import load
    from dfcil.workflow.folder import report_skipped
    from dfcil.workflow.inference import plot_confusion

    out = args.out or Path(f"evaluation-{args.model.stem}")
    outputs = (out / "evaluation.json", out / "confusion.png")
    earlier = [path for path in outputs if path.exists()]
    if earlier and not args.force:
        raise DfcilError(f"{earlier[0]} already exists (an earlier evaluation): choose another --out "
                         "or pass --force to replace it")
    for path in outputs:
        problem = unwritable_reason(path)
        if problem:
            raise DfcilError(f"cannot write {path}: {problem}")
    model = load(args.model)
    result = model.evaluate(args.data, strict=args.strict)
    report_skipped(result.skipped)
    write_json(out / "evaluation.json", {"model": str(args.model), "data": str(args.data), **result.to_dict()})
    plot_confusion(result, out / "confusion.png", f"{args.model.name} on {args.data}")
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"accuracy {result.accuracy:.2f} % on {result.images} images of {len(result.per_class)} classes")
    for step in result.per_step:
        shown = "-" if step["accuracy"] is None else f"{step['accuracy']:.2f} %"
        print(f"  step {step['step']} ({step['classes']} classes, {step['images']} images): {shown}")
    for name, accuracy in result.per_class.items():
        print(f"  {name}: {accuracy:.2f} %")
    print(f"written: {out / 'evaluation.json'}, {out / 'confusion.png'}")
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
        commands = {"run": _run, "suite": _suite, "report": _report, "learn": _learn, "predict": _predict, "evaluate": _evaluate}
        with console_logging():
            if args.command in commands:
                return commands[args.command](args)
            return _methods()
    except DfcilError as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"dfcil: error: {message}", file=sys.stderr)
        return 2
    except Interrupted as interrupted:
        print(f"dfcil: interrupted; {interrupted}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("dfcil: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
