"""The ``hfprep`` command line (also ``python -m hfprep``).

Exit codes: 0 success; 1 a runtime or data error (one line on stderr, no traceback); 2 a usage error (bad
arguments, invalid recipe); 130 interrupted (Ctrl-C; no partial output or scratch is left behind); 143 stopped by
SIGTERM (the same cleanup).

Example:
    >>> main(["validate", "out/quickstart"])  # doctest: +SKIP
    ok: out/quickstart (train: 146 rows, ...)
    0
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import HfprepError, RecipeError
from .interrupts import COMMITTED, Terminated, handle_interrupts, was_interrupted
from .version import __version__

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
RESUMABLE_NOTE = "finished shards are kept for the next run, no partial output was written (re-run to resume)"
INTERRUPT_NOTES = {
    "kd-cache": RESUMABLE_NOTE,
    "repack": RESUMABLE_NOTE,
    "export": RESUMABLE_NOTE,
    "push": "nothing local was changed (re-run the command to finish the push)",
}

DESCRIPTION = """\
Prepare language-model training data on Hugging Face datasets:
tokenize -> pack -> write a Hub-layout folder with a dataset card -> push.

  hfprep run recipes/quickstart.yaml           # offline demo, under a minute
  hfprep validate out/quickstart               # recheck every invariant
  hfprep inspect out/quickstart --row 3        # schema, stats, a decoded row
  hfprep inspect me/quickstart:code            # the same for a config of a Hub repo
  hfprep push out/quickstart --repo-id me/quickstart
  hfprep repack out/quickstart --seq-len 1024 --output out/qs-1024   # needs output.documents: true
  hfprep export out/quickstart --format megatron --output out/megatron/train
"""

EPILOG = "Exit codes: 0 ok, 1 runtime/data error, 2 usage error or invalid recipe, 130 interrupted, 143 terminated."


# The functions the commands run -> their modules, imported when a command runs (the CLI's only lazy imports): the
# stages load datasets, transformers and pyarrow (about a second; the KD builder torch too), which `hfprep --help`,
# `--version` and a usage error must not wait for.
STAGE_FUNCTIONS = {
    "start_worker": "hfprep.output.plots",
    "stop_worker": "hfprep.output.plots",
    "run_recipe": "hfprep.run",
    "format_summary": "hfprep.describe",
    "disable_progress_bar": "datasets.utils.logging",
    "check_config_name": "hfprep.output.hub",
    "plan_push": "hfprep.output.hub",
    "push_folder": "hfprep.output.hub",
    "validate_folder": "hfprep.output.validate",
    "inspect_target": "hfprep.output.inspect_cmd",
    "to_json": "hfprep.output.inspect_cmd",
    "run_kd_recipe": "hfprep.kd.builder",
    "repack": "hfprep.commands.repack",
    "format_repack_summary": "hfprep.commands.repack",
    "export": "hfprep.commands.export",
    "format_export_summary": "hfprep.commands.export",
}


def _stage(name: str) -> Any:
    """The function ``name`` of :data:`STAGE_FUNCTIONS`, its module imported on first use."""
    return getattr(importlib.import_module(STAGE_FUNCTIONS[name]), name)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _documents_command_options(
    p: argparse.ArgumentParser, output_metavar: str, output_help: str, budget_help: str, overwrite_help: str
) -> None:
    """The options ``repack`` and ``export`` share (after their own, so ``--help`` lists those first): the source, the
    output, the revision, memory, overwrite, JSON."""
    p.add_argument("source", metavar="SRC", help="prepared folder or Hub dataset repo id with a documents config")
    p.add_argument("--output", required=True, metavar=output_metavar, help=output_help)
    p.add_argument("--revision", metavar="REV", help="Hub revision to read (branch, tag or commit; default main)")
    p.add_argument("--memory-budget", type=int, metavar="BYTES", help=budget_help)
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (events + final summary)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="hfprep", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"hfprep {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="run a recipe: source -> packed dataset folder (+ card, + push)",
                         description="Run a recipe end to end and print a summary.", epilog=EPILOG, formatter_class=fmt)
    run.add_argument("recipe", metavar="RECIPE", help="recipe YAML file (see recipes/)")
    run.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    run.add_argument("--engine", choices=["datasets", "ray"], help="override the recipe's engine")
    run.add_argument("--num-proc", type=int, metavar="N", help="worker processes (datasets engine)")
    run.add_argument("--no-push", action="store_true", help="do not push even if the recipe has hub.repo_id")
    run.add_argument("--json", action="store_true", help="JSON lines on stdout (events + final summary)")
    run.add_argument("--verbose", action="store_true",
                     help="show the engine's own log lines (Ray's INFO logs; by default they go to a log file)")

    push = sub.add_parser("push", help="upload a prepared folder to a Hub dataset repo",
                          description="Upload a prepared folder (data/, README.md, images/) to the Hub.",
                          epilog=EPILOG, formatter_class=fmt)
    push.add_argument("folder", metavar="FOLDER")
    push.add_argument("--repo-id", required=True, metavar="ID", help="user/name of the dataset repo")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", metavar="BRANCH", help="branch to push to, created from main if needed "
                      "(default main)")
    push.add_argument("--config-name", default="default", metavar="NAME",
                      help="dataset config to push as: data under data/NAME/ (default: the default config, data/)")
    push.add_argument("--message", help="commit message")
    push.add_argument("--dry-run", action="store_true", help="list what would be added and deleted; change nothing")
    push.add_argument("--no-validate", action="store_true", help="skip `hfprep validate` of the folder before pushing")
    push.add_argument("--json", action="store_true", help="JSON line on stdout")

    insp = sub.add_parser("inspect", help="schema, stats and a decoded row of a folder or Hub repo",
                          description="Show schema, statistics, the packing report and one decoded row with segment "
                          "boundaries (text without loss between \u2039 and \u203a). On the Hub only the card, the "
                          "row's row group and the bundled tokenizer are read.", epilog=EPILOG, formatter_class=fmt)
    insp.add_argument("target", metavar="FOLDER|REPO[:CONFIG]", help="a prepared folder or a Hub dataset repo id")
    insp.add_argument("--config", metavar="NAME", help="dataset config (default: 'default', or the only one)")
    insp.add_argument("--revision", metavar="REV", help="Hub branch, tag or commit (default main)")
    insp.add_argument("--split", help="split to sample (default train)")
    insp.add_argument("--row", type=int, default=0, help="row index (default 0)")
    insp.add_argument("--tokenizer", help="tokenizer for decoding (default: the dataset's own)")
    insp.add_argument("--report", action="store_true",
                      help="packing report from every row of the split (on the Hub: downloads its shards)")
    insp.add_argument("--json", action="store_true", help="JSON on stdout")

    val = sub.add_parser("validate", help="recheck lengths, dtypes, positions, padding and card stats",
                         description="Recompute every invariant of a prepared folder; exit 1 listing violations.",
                         epilog=EPILOG, formatter_class=fmt)
    val.add_argument("folder", metavar="FOLDER")
    val.add_argument("--max-violations", type=int, default=50, metavar="N")
    val.add_argument("--json", action="store_true", help="JSON on stdout")

    rep = sub.add_parser("repack", help="pack a prepared dataset's documents again at another seq_len (no tokenizer)",
                         description="Pack the documents config of a prepared folder or Hub repo again, without the "
                         "tokenizer or the source: the data shards equal a fresh `hfprep run` with the new packing.",
                         epilog=EPILOG, formatter_class=fmt)
    rep.add_argument("--seq-len", type=int, required=True, metavar="N", help="the new row length")
    rep.add_argument("--strategy", metavar="NAME", help="packer: dense, no_incomplete or bfd (default: the source's)")
    rep.add_argument("--packing-kwargs", metavar="JSON",
                     help='packer options as JSON, e.g. \'{"overflow": "truncate"}\' (default: the source\'s for the '
                     "same packer, else none)")
    rep.add_argument("--num-reduce-chunks", type=int, metavar="K",
                     help="must equal the source's (a repack keeps its keys; re-run the recipe to change them)")
    _documents_command_options(rep, "DIR", "the new prepared folder", "bytes of documents held at once (one group)",
                               "replace the output folder if it exists")

    exp = sub.add_parser("export", help="write a prepared dataset's documents for Megatron-LM/NeMo or as flat ids",
                         description="Export one split of the documents config: Megatron's indexed dataset "
                         "(PREFIX.bin + PREFIX.idx) or a flat token file (PREFIX.bin + PREFIX.json).",
                         epilog=EPILOG, formatter_class=fmt)
    exp.add_argument("--format", required=True, choices=["megatron", "flat"])
    exp.add_argument("--split", metavar="NAME", help="split to export (default: the first, the train split)")
    _documents_command_options(exp, "PREFIX", "output files PREFIX.bin, PREFIX.idx/.json",
                               "bytes of documents held at once", "replace existing output files")

    kd = sub.add_parser("kd-cache", help="build a knowledge-distillation cache from a KD recipe",
                        description="Run a teacher over packed rows and store its top-k log-probs.",
                        epilog=EPILOG, formatter_class=fmt)
    kd.add_argument("recipe", metavar="RECIPE")
    kd.add_argument("--overwrite", action="store_true")
    kd.add_argument("--json", action="store_true", help="JSON lines on stdout")
    return p


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, default=str), flush=True)


def _human_event(e: dict[str, Any]) -> None:
    kind = e.get("event")
    if kind == "summary":
        return
    detail = ", ".join(str(v) if k == kind else f"{k} {v}" for k, v in e.items() if k != "event")
    print(f"[hfprep] {kind}: {detail}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _figures_drawn_aside() -> Iterator[None]:
    """The card's figures are drawn by a process started now (matplotlib loads there while the command loads here),
    ended with the command."""
    _stage("start_worker")()
    try:
        yield
    finally:
        _stage("stop_worker")()


def cmd_run(args: argparse.Namespace) -> int:
    if args.num_proc is not None and args.num_proc < 1:
        raise _UsageError("--num-proc must be >= 1")
    with _figures_drawn_aside():
        if args.json:
            _stage("disable_progress_bar")()
        summary = _stage("run_recipe")(
            args.recipe,
            overwrite=True if args.overwrite else None,
            engine=args.engine,
            num_proc=args.num_proc,
            push=False if args.no_push else None,
            log=_emit if args.json else _human_event,
            verbose=args.verbose,
        )
    if not args.json:
        print(_stage("format_summary")(summary))
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    try:
        _stage("check_config_name")(args.config_name)
    except HfprepError as e:
        raise _UsageError(f"--config-name: {e}") from None
    if not args.no_validate:
        report = _stage("validate_folder")(args.folder)
        if not report.ok:
            first = report.violations[0] if report.violations else "invalid"
            raise HfprepError(
                f"{args.folder} fails validation ({len(report.violations)} violation(s), first: {first}); "
                f"run `hfprep validate {args.folder}` for all, re-create the folder, or pass --no-validate"
            )
    if args.dry_run:
        plan = _stage("plan_push")(args.folder, args.repo_id, config_name=args.config_name, revision=args.revision)
        if args.json:
            _emit({"event": "dry_run", "folder": args.folder, "repo_id": args.repo_id, "revision": plan.revision,
                   "config_name": plan.config_name, "added": plan.added, "deleted": plan.deleted,
                   "commits": len(plan.commits)})
        else:
            for line in plan.lines():
                print(line)
            print(f"dry run: {len(plan.added)} to add, {len(plan.deleted)} to delete in {len(plan.commits)} "
                  f"commit(s) to {args.repo_id}@{plan.revision} (config {plan.config_name}); nothing was changed")
        return EXIT_OK
    url = _stage("push_folder")(args.folder, args.repo_id, private=args.private, revision=args.revision,
                                commit_message=args.message, config_name=args.config_name)
    if args.json:
        _emit({"event": "pushed", "folder": args.folder, "repo_id": args.repo_id, "url": url})
    else:
        print(f"pushed {args.folder} -> {url}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    result = _stage("inspect_target")(args.target, split=args.split, row=args.row, tokenizer=args.tokenizer,
                                      config=args.config, revision=args.revision, report=args.report)
    print(_stage("to_json")(result) if args.json else result["text"])
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    if args.max_violations < 1:
        raise _UsageError("--max-violations must be >= 1")
    if not os.path.isdir(args.folder):
        what = "is a file, not a folder" if os.path.exists(args.folder) else "does not exist"
        raise _UsageError(f"{args.folder}: {what}; give the dataset folder that `hfprep run` wrote")
    report = _stage("validate_folder")(args.folder, max_violations=args.max_violations)
    if args.json:
        _emit({"event": "validate", "folder": report.folder, "ok": report.ok, "violations": report.violations,
               "truncated": report.truncated, "stats": report.stats})
    elif report.ok:
        parts = ", ".join(f"{s}: {v['rows']:,} rows, {v['tokens']:,} tokens" for s, v in report.stats.items())
        print(f"ok: {report.folder} ({parts})")
    else:
        n = len(report.violations)
        head = f"the first {n} violation(s); the list was cut at --max-violations {args.max_violations}, more may " \
            "exist (raise it to see them)" if report.truncated else f"{n} violation(s)"
        print(f"invalid: {report.folder}: {head}", file=sys.stderr)
        for v in report.violations:
            print(f"  {v}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_ERROR


def cmd_kd_cache(args: argparse.Namespace) -> int:
    try:
        run_kd_recipe = _stage("run_kd_recipe")
    except ImportError as e:
        raise HfprepError(f"kd-cache is not available in this installation ({e})") from e
    result = run_kd_recipe(args.recipe, overwrite=args.overwrite)
    if args.json:
        _emit({"event": "summary", **result})
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return EXIT_OK


def _budget(args: argparse.Namespace) -> dict[str, int]:
    if args.memory_budget is None:
        return {}
    if args.memory_budget < 1:
        raise _UsageError("--memory-budget must be >= 1 (bytes)")
    return {"memory_budget": args.memory_budget}


def cmd_repack(args: argparse.Namespace) -> int:
    if args.seq_len < 2:
        raise _UsageError("--seq-len must be >= 2 (a row needs an input token and a target)")
    kwargs = None
    if args.packing_kwargs is not None:
        try:
            kwargs = json.loads(args.packing_kwargs)
        except ValueError as e:
            raise _UsageError(f"--packing-kwargs: not JSON ({e}); e.g. '{{\"overflow\": \"split\"}}'") from None
        if not isinstance(kwargs, dict):
            raise _UsageError("--packing-kwargs: give a JSON object, e.g. '{\"pad\": false}'")
    with _figures_drawn_aside():
        if args.json:
            _stage("disable_progress_bar")()
        summary = _stage("repack")(
            args.source, args.output, seq_len=args.seq_len, strategy=args.strategy, packing_kwargs=kwargs,
            num_reduce_chunks=args.num_reduce_chunks, revision=args.revision, overwrite=args.overwrite,
            log=_emit if args.json else _human_event, **_budget(args),
        )
    if not args.json:
        print(_stage("format_repack_summary")(summary))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    summary = _stage("export")(
        args.source, args.output, format=args.format, split=args.split, revision=args.revision,
        overwrite=args.overwrite, log=_emit if args.json else _human_event, **_budget(args),
    )
    if not args.json:
        print(_stage("format_export_summary")(summary))
    return EXIT_OK


class _UsageError(Exception):
    pass


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    text = " ".join(str(message).split())
    return f"hfprep: warning: {text}\n"


def _close_progress_bars() -> None:
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        with contextlib.suppress(Exception):  # a bar half torn down by the interrupt: the message matters more
            bar.close()


def _end_process_that_ran_ray(code: int) -> None:
    """End an interrupted ``hfprep`` process that ran Ray with ``code``, now: the run's cleanup is done and its line
    printed, but Ray's C++ threads can crash the interpreter's own shutdown once a run was cut short (a SIGSEGV in
    a ``worker.io`` thread, after everything else). Exit handlers (datasets' temporary cache folder) still run;
    only the interpreter's teardown is skipped. A no-op when Ray was never imported."""
    ray = sys.modules.get("ray")
    if ray is None:
        return
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        if ray.is_initialized():
            ray.shutdown()
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


COMMANDS = {"run": cmd_run, "push": cmd_push, "inspect": cmd_inspect, "validate": cmd_validate,
            "kd-cache": cmd_kd_cache, "repack": cmd_repack, "export": cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    # Warnings are one line on stderr, like errors (Python's default adds the source line that raised them).
    warnings.formatwarning = _one_line_warning

    def fail(code: int, err: BaseException, kind: str) -> int:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        _close_progress_bars()  # else the message is glued to the end of an interrupted progress bar
        if as_json:
            _emit({"event": "error", "kind": kind, "error": type(err).__name__, "message": message, "exit_code": code})
        else:
            print(f"hfprep {args.command}: error: {message}", file=sys.stderr)
        return code

    committed_before = len(COMMITTED)
    try:
        with handle_interrupts():
            return COMMANDS[args.command](args)
    except (Exception, KeyboardInterrupt) as e:
        # An interrupt can surface as another exception (a worker pool stopped mid-task): it is still Ctrl-C.
        signum = was_interrupted()
        if isinstance(e, KeyboardInterrupt) or signum is not None:
            code = EXIT_TERMINATED if signum == signal.SIGTERM or isinstance(e, Terminated) else EXIT_INTERRUPTED
            what = "terminated" if code == EXIT_TERMINATED else "interrupted"
            note = INTERRUPT_NOTES.get(args.command, "no partial output was written (re-run the command to finish)")
            if len(COMMITTED) > committed_before:  # the signal came after the output was put in place
                done = COMMITTED[-1]
                note = f"{done} was written before it and is complete (`hfprep validate {done}` checks it)"
            fail(code, KeyboardInterrupt(f"{what}; {note}"), what)
            if argv is None:
                _end_process_that_ran_ray(code)
            return code
        if isinstance(e, RecipeError | _UsageError):
            return fail(EXIT_USAGE, e, "usage")
        if isinstance(e, HfprepError):
            return fail(EXIT_ERROR, e, "error")
        raise
    finally:
        if argv is None:
            # The process entry point: the work is done or reported; a Ctrl-C on the way out (interpreter shutdown,
            # cache cleanup) must not print a traceback.
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
