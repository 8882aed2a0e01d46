"""``harness``: run suites, validate them, list plugins, open the MLflow UI.

Bad input (a suite, a plugin, an option, a data root) ends with one line on stderr naming the
file and key, and exit code 2; a stage run that fails is recorded and gives exit code 1; Ctrl-C
gives 130, SIGTERM (a scheduler's time limit or preemption) 143; a full or read-only disk under
the store, the artifacts or the resume folder gives one line saying which, and exit code 3.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
from pathlib import Path

from . import __version__, storage
from .errors import UserError
from .interrupts import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, sigterm_as_interrupt
from .ui import serve_ui

EXIT_FAILED_RUNS = 1
EXIT_USAGE = 2
EXIT_NOT_CHECKED = 3  # `plugins --check`: nothing failed, but some name could not be checked


@functools.lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    """Built once per process (a parse does not change it): tests call ``main`` thousands of
    times."""
    top, common = _common_options(""), _common_options("sub_")
    p = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0],
                                parents=[top])
    p.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _run_parser(sub, common)

    pln = sub.add_parser("plan", parents=[common],
                         help="what `run` would execute, what finished, and how long it may take")
    pln.add_argument("suite")
    pln.add_argument("--profile", help="a profile of the suite (default: its `default` profile)")
    pln.add_argument("-j", "--jobs", type=int, default=None,
                     help="estimate for this many parallel stage runs (default: as `harness "
                          "run` with the same flags: 1 with the one-job executor)")
    pln.add_argument("--executor", default=None, help="as for `harness run`")
    pln.add_argument("--gpus", default=None, help="as for `harness run`")
    pln.add_argument("--runs-per-gpu", type=int, default=1, help="as for `harness run`")
    pln.add_argument("--data-root", help="folder of file-backed datasets (default: HOME/data)")

    val = sub.add_parser("validate", parents=[common], help="check a suite without running it")
    val.add_argument("suite")
    val.add_argument("--profile")
    val.add_argument("--data-root", help="folder of file-backed datasets (default: HOME/data)")

    rep = sub.add_parser("report", parents=[common],
                         help="tables, figures and claim verdicts from the runs in the store")
    rep.add_argument("suite")
    rep.add_argument("--profile", help="a profile of the suite (default: the profile of the newest "
                                       "finished runs in the store, else `default`)")
    rep.add_argument("--out", help="output folder (default: reports/<suite name>)")
    rep.add_argument("--data-root", help="folder of file-backed datasets (default: HOME/data)")
    rep.add_argument("--force", action="store_true",
                     help="replace a report that is committed to git")

    plug = sub.add_parser("plugins", parents=[common], help="list loaded plugins")
    plug.add_argument("--json", action="store_true")
    plug.add_argument("--check", nargs="*", metavar="PLUGIN", default=None,
                      help="run the conformance kit on every installed plugin (or those named)")

    new = sub.add_parser("new", help="write a plugin package that installs, passes the kit, runs")
    new.add_argument("kind", choices=["method", "dataset", "architecture", "evaluator"])
    new.add_argument("name", help="the plugin's name, e.g. my_reg")
    new.add_argument("--dir", default=".", help="where the package folder goes (default: here)")

    lst = sub.add_parser("list", parents=[common], help="list registered names of one kind")
    lst.add_argument("kind", choices=["datasets", "architectures", "methods", "evaluators",
                                      "executors"])

    ui = sub.add_parser("ui", parents=[common], help="open the MLflow UI on this store (loopback)")
    ui.add_argument("--port", type=int, default=5000)
    return p


def _common_options(prefix: str) -> argparse.ArgumentParser:
    """``--home`` and ``--plugin``, accepted before the command and after it.

    The command's copies store under other names and default to nothing: argparse copies a
    subcommand's namespace over the main one, so shared names would reset ``harness --home X
    run`` to the default home (``merge_common_options`` joins the two)."""
    common = argparse.ArgumentParser(add_help=False)
    sub = argparse.SUPPRESS if prefix else None
    common.add_argument("--home", dest=prefix + "home", default=sub,
                        help="harness home folder holding the MLflow store "
                             "(default: $HARNESS_HOME or ./.harness)")
    common.add_argument("--plugin", dest=prefix + "plugin", action="append",
                        default=sub if prefix else [], metavar="MODULE",
                        help="also load this plugin module (repeatable)")
    return common


def merge_common_options(args: argparse.Namespace) -> argparse.Namespace:
    """The command's ``--home`` wins over one given before the command; plugins add up."""
    if getattr(args, "sub_home", None) is not None:
        args.home = args.sub_home
    args.plugin = list(args.plugin) + list(getattr(args, "sub_plugin", []))
    for name in ("sub_home", "sub_plugin"):
        args.__dict__.pop(name, None)
    return args


def _run_parser(sub, common) -> None:
    """`harness run`: the command with the most options, apart so that `_parser` reads."""
    run = sub.add_parser("run", parents=[common], help="run a suite (skips finished stage runs)")
    run.add_argument("suite")
    run.add_argument("--profile", help="a profile of the suite (default: its `default` profile)")
    run.add_argument("--dry-run", action="store_true", help="print the stage runs, run nothing")
    run.add_argument("--executor", default=None,
                     help="where stage runs execute (`harness list executors`; default: the "
                          "plugins' choice for one job at a time, and for several with -j N)")
    run.add_argument("-j", "--jobs", type=int, default=None,
                     help="parallel stage runs (default: 1 with the one-job executor, else the cores)")
    run.add_argument("--log-model", default=None,
                     choices=("pickle", "pt2", "off"),
                     help="how each trained network is logged as an MLflow model (default "
                          "$HARNESS_LOG_MODEL, else pickle: loads back as the same module; pt2: "
                          "torch.export's graph; off: none)")
    run.add_argument("--gpus", default=None,
                     help="GPUs the workers share, e.g. 0,1 (default: CUDA_VISIBLE_DEVICES, else "
                          "every GPU torch sees); `none`: CPU only")
    run.add_argument("--runs-per-gpu", type=int, default=1,
                     help="stage runs sharing one GPU at a time (default 1)")
    run.add_argument("--address", help="the Ray cluster for --executor ray (default: a local Ray "
                                       "started for this run)")
    run.add_argument("--resume", action="store_true",
                     help="continue interrupted stage runs from their last saved epoch")
    run.add_argument("--checkpoint-every", type=float, default=30.0, metavar="SECONDS",
                     help="seconds of training between saves of the state --resume continues "
                          "from (default 30; 0: every epoch)")
    run.add_argument("--data-root", help="folder of file-backed datasets (default: HOME/data)")
    run.add_argument("--download", action="store_true",
                     help="allow torchvision to download missing dataset files")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    run.add_argument("--force", action="store_true",
                     help="run finished stage runs again (as new runs; the old ones are kept)")
    run.add_argument("--only", action="append", default=[], metavar="KEY=VALUE,...",
                     help="run only the stage runs that match, and those they start from; keys: "
                          "setting, stage, method, dataset, architecture, seed (repeatable: "
                          "a union)")


def printable(text: str) -> str:
    """Control and bidirectional-override characters escaped, so that a name in a suite can
    neither move the cursor nor reorder what the terminal shows."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def main(argv: list[str] | None = None) -> int:
    args = merge_common_options(_parser().parse_args(argv))
    try:
        return _dispatch(args, argv)
    except UserError as err:
        one_line = printable(" ".join(err.format().split()))  # a plugin's may span lines
        print(f"harness: error: {one_line}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated:
        print(f"harness: terminated by SIGTERM; running stage runs were recorded as KILLED "
              f"and keep their last saved epoch: continue with `{_resume_command(args)}`",
              file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("harness: interrupted; running stage runs were recorded as KILLED", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        full = storage.recognise(exc, args.home or "the harness home")
        if full is None:
            raise
        print(f"harness: error: {printable(full.message(_resume_command(args)))}", file=sys.stderr)
        return storage.EXIT_STORAGE


def _resume_command(args) -> str:
    """The command that continues an interrupted ``harness run`` where it stopped."""
    if args.command != "run":
        return f"harness {args.command}"
    words = ["harness", "run", args.suite]
    for flag, value in (("--profile", args.profile), ("--home", args.home)):
        if value:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in [*words, "--resume"])


def _dispatch(args, argv) -> int:
    # each command imports what it needs, so that `harness list` does not start MLflow or torch
    from .plugins import load
    from .tracking import resolve_home

    home = resolve_home(args.home)
    # a plugin file is named by its absolute path, so worker processes find it too
    args.plugin = [str(Path(p).expanduser().resolve()) if p.endswith(".py") or "/" in p else p
                   for p in args.plugin]
    if args.command == "validate":
        return _validate(args, home, load(args.plugin))
    if args.command == "plugins":
        if args.check is not None:
            return _check_plugins(args, load(args.plugin))
        return _plugins(args, _say_clashes(load(args.plugin, strict=False)))
    if args.command == "new":
        return _new(args)
    if args.command == "list":
        registry = _say_clashes(load(args.plugin, strict=False)).registry(args.kind)
        for name in registry.names():
            for entry in [registry.get(name), *registry.clashes.get(name, [])]:
                clash = "  [registered twice]" if name in registry.clashes else ""
                print(f"{name:<20} {entry.plugin:<24} {entry.describe()}{clash}")
        return 0
    if args.command == "ui":
        return serve_ui(home, args.port)
    if args.command == "plan":
        return _plan(args, home, load(args.plugin))
    if args.command == "report":
        return _report(args, argv, home, load(args.plugin))
    return _run(args, argv, home, load(args.plugin))


def _validate(args, home: Path, plugins) -> int:
    """The checks of ``run --dry-run``: names, options, the DAG, the data, and every network
    and method built once, untrained (``runner.preflight``), so what ``run`` refuses, this
    refuses too. Nothing is written."""
    from .plan import make_plan  # torch, through the engine: only for commands that plan
    from .suite import SuiteDefaults, load_suite

    suite = load_suite(args.suite, args.profile, defaults=SuiteDefaults.of(plugins))
    data_root = Path(args.data_root).resolve() if args.data_root else home / "data"
    runs = make_plan(suite, plugins, data_root).runs
    profile = f", profile {suite.profile!r}" if suite.profile else ""
    print(f"{args.suite}: suite {suite.name!r}{profile} is valid: {len(suite.settings)} setting(s), "
          f"{len(runs)} stage runs")
    return 0


def _report(args, argv, home: Path, plugins) -> int:
    from .report import Store, choose_profile, report_suite  # MLflow and torch: only to report
    from .suite import SuiteDefaults, load_suite

    defaults = SuiteDefaults.of(plugins)
    suite = load_suite(args.suite, args.profile, defaults=defaults)
    if args.profile is None:  # the profile that has runs, not one that shows every cell missing
        profile, note = choose_profile(suite, Store.open(home, suite.name))
        if profile != suite.profile:
            suite = load_suite(args.suite, profile, defaults=defaults)
        if note:
            print(note)
    out = Path(args.out) if args.out else Path("reports") / suite.name
    data_root = Path(args.data_root).resolve() if args.data_root else home / "data"
    command = "harness " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    data, path = report_suite(suite, plugins, home=home, out=out, data_root=data_root,
                              command=command, force=args.force)
    for i, verdict in enumerate(data.verdicts, 1):
        setting = f"[{verdict.setting}] " if len(data.settings) > 1 else ""
        print(f"claim {i} {setting}{verdict.summary()}")
    counts = data.counts()
    total = sum(counts.values())
    if counts.get("finished", 0) < total:
        expected = data.expected_count()
        print(f"{total - counts.get('finished', 0)} of {total} planned stage runs have not finished "
              f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items()) if k != 'finished')}"
              f"{f'; {expected} of them expected to fail' if expected else ''}); "
              "the report lists them")
    print(f"report written to {path}")
    return 0


def _say_clashes(plugins):
    """``plugins`` and ``list`` load the plugins even when two register one name (what a run
    refuses), so that the author sees the clash and what to disable; a warning says it."""
    from .plugins import DISABLE_ENV  # as _dispatch: the plugin manager only for the commands

    for kind, name, owners in plugins.clashes():
        print(f"harness: warning: {kind[:-1]} {name!r} is registered by plugins "
              f"{' and '.join(map(repr, owners))}: `harness run` refuses it until one is "
              f"uninstalled, renamed or left out with {DISABLE_ENV}={owners[-1]}", file=sys.stderr)
    return plugins


def _plugins(args, plugins) -> int:
    infos = plugins.describe()
    if args.json:
        print(json.dumps([vars(i) for i in infos], indent=2))
        return 0
    for info in infos:
        regs = "; ".join(f"{kind}: " + ", ".join(
            name + (" [registered twice]" if name in info.clashes.get(kind, ()) else "")
            for name in names) for kind, names in info.registers.items()) or "-"
        hooks = ", ".join(h.replace("harness_", "") for h in info.hooks)
        print(f"{info.name} {info.version} ({info.module})\n    hooks: {hooks}\n    registers: {regs}")
    return 0


def _check_plugins(args, plugins) -> int:
    from .testing.installed import check_installed  # the kit imports torch and pytest's helpers

    rows = check_installed(plugins, args.check or None)
    for row in rows:
        state = ("cannot check" if row.error else "FAILED" if row.failed else "passed")
        note = f" ({row.note})" if row.note else ""
        print(f"{row.plugin:<28} {row.kind:<13} {row.name:<20} {state:<12} "
              f"{len(row.passed)} passed, {len(row.failed)} failed{note}")
        for check, why in row.failed.items():
            print(f"    {check}: {why}")
        if row.error:
            print(f"    {row.error}")
    if any(row.failed for row in rows):
        return EXIT_FAILED_RUNS
    return EXIT_NOT_CHECKED if any(row.error for row in rows) else 0


def _new(args) -> int:
    from .plugins import load
    from .scaffold import scaffold  # only `harness new` needs the templates
    from .suite import SuiteDefaults

    plugins = load(strict=False)
    registry = plugins.registry(args.kind + "s")
    if args.name in registry:
        raise UserError(f"a {args.kind} named {args.name!r} is registered already, by plugin "
                        f"{registry.get(args.name).plugin!r}", key="name",
                        hint="choose another name: two plugins that register one name make "
                             "`harness run` refuse both")
    around = SuiteDefaults.of(plugins).scaffold  # the installed plugins the new one is put among
    if not around:
        raise UserError("no plugin says which plugins a new plugin's suite runs with",
                        hint="install the built-in plugins (harness_suite_defaults: scaffold)")
    root = scaffold(args.kind, args.name, Path(args.dir), around)
    print(f"wrote {root}: pip install -e '{root}[test]', then python -m pytest {root}/tests "
          f"and harness run {root}/suites/{args.name}.yaml")
    return 0


def _workers(args, plugins):
    """The executor's name, the number of parallel stage runs and the GPU placement that these
    flags give: one function, so that `plan` describes the run that `run` with the same flags
    makes (without -j, the one-job executor runs one stage run at a time)."""
    from .executors import cores_here  # the executors' base imports the engine, and torch
    from .suite import SuiteDefaults

    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"-j must be at least 1, got {args.jobs}", key="-j",
                        hint="-j 1 runs one stage run at a time")
    chosen = SuiteDefaults.of(plugins).executors  # the plugins' choice without --executor
    one = chosen.get("one")
    name = getattr(args, "executor", None) or (chosen.get("several") if (args.jobs or 1) > 1 else one)
    if name is None:
        raise UserError("no executor is named and no plugin gives a default", key="--executor",
                        hint="name one with --executor (see `harness list executors`)")
    placement = _placement(args)
    default = placement.capacity or cores_here()
    jobs = args.jobs if args.jobs is not None else (1 if name == one else default)
    placement.check_jobs(jobs)
    return name, jobs, placement


def _executor(args, plugins):
    from .plugins import check_options  # as _workers: only for run

    name, jobs, placement = _workers(args, plugins)
    try:
        entry = plugins.get("executors", name)
    except UserError as err:
        raise err.located(key="--executor") from None
    options = {"address": args.address} if args.address else {}
    try:
        check_options(entry, options)
    except UserError as err:
        raise UserError(err.message, key="--address", hint="--address is for --executor ray") from None
    if args.checkpoint_every < 0:
        raise UserError("--checkpoint-every must be 0 or more seconds", key="--checkpoint-every")
    executor = entry.obj(jobs=jobs, **options)
    executor.placement = placement
    return executor


def _placement(args):
    from .placement import Placement, visible_gpus  # as _executor: only for run and plan

    gpus = [] if args.gpus == "none" else visible_gpus(args.gpus)
    return Placement(gpus, args.runs_per_gpu)


def _plan(args, home: Path, plugins) -> int:
    # torch and MLflow, through the planner and the store: only for the commands that use them
    from .estimate import plan_text
    from .groups import describe, form_groups
    from .plan import make_plan
    from .suite import SuiteDefaults, load_suite
    from .tracking import Tracker

    suite = load_suite(args.suite, args.profile, defaults=SuiteDefaults.of(plugins))
    data_root = Path(args.data_root).resolve() if args.data_root else home / "data"
    plan = make_plan(suite, plugins, data_root)
    name, jobs, placement = _workers(args, plugins)
    tracker = Tracker.existing(home, suite.name)
    print(plan_text(plan, tracker, home, jobs))
    print(placement.describe(jobs))
    if getattr(plugins.get("executors", name).obj, "stacks", False):
        todo = plan.todo(tracker.finished() if tracker is not None else {})
        lines = describe(form_groups(plan, todo, plugins, jobs))
    else:
        lines = [f"stacking: none with the executor {name!r}, which trains stage runs alone"]
    if lines:
        print("\n".join(lines))
    return 0


def _run(args, argv, home: Path, plugins) -> int:
    # torch and MLflow, through the planner, the driver and the report: only for `harness run`
    from .plan import make_plan
    from .progress import Progress
    from .report import log_summary
    from .runner import Driver
    from .selection import parse_only, select
    from .suite import SuiteDefaults, load_suite
    from .tracking import Tracker, check_writable

    suite = load_suite(args.suite, args.profile, defaults=SuiteDefaults.of(plugins))
    data_root = Path(args.data_root).resolve() if args.data_root else home / "data"
    if args.download:
        for setting in suite.settings:
            for stage in setting.stages.values():
                stage.run["download"] = True
    executor = _executor(args, plugins)
    progress = Progress(quiet=args.quiet)
    if not args.dry_run:
        check_writable(home)  # before the data is built: minutes of MLflow retries otherwise
    filters = parse_only(args.only)  # before the data is built
    plan = make_plan(suite, plugins, data_root)
    selected = select(plan.runs, filters) if filters else None
    if args.dry_run:
        runs = [r for r in plan.runs if selected is None or r.key in selected]
        for run in runs:
            print(f"{run.name:<40} {plan.identities[run.key]}  epochs={run.run['epochs']}")
        print(f"{len(runs)} stage runs")
        return 0
    tracker = Tracker(home, suite.name, description=suite.description)
    if tracker.note:
        progress.say(tracker.note)
    command = "harness " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    driver = Driver(plan, tracker, plugins, home=home, data_root=data_root, executor=executor,
                    progress=progress, command=command, plugin_modules=args.plugin,
                    resume=args.resume, checkpoint_every=args.checkpoint_every,
                    force=args.force, selected=selected, summary=log_summary,
                    log_model=args.log_model or os.environ.get("HARNESS_LOG_MODEL") or "pickle")
    with sigterm_as_interrupt():
        outcome = driver.run()
    _say_outcome(progress, outcome, tracker.uri)
    return outcome.exit_code


def _say_outcome(progress, outcome, uri: str) -> None:
    """The last lines of ``harness run``: what failed unexpectedly, what failed as the suite
    expects (and why that is not an error), and what trained although expected to fail."""
    if outcome.failed or outcome.skipped:
        expected = f" ({outcome.expected} of them expected)" if outcome.expected else ""
        progress.say(f"{outcome.finished} finished, {outcome.failed} failed, {outcome.skipped} "
                     f"skipped{expected}, {outcome.already} already finished")
        for msg in outcome.messages:
            progress.say(f"  failed: {msg}")
        for msg in outcome.expected_messages:
            progress.say(f"  expected to fail (the suite's expect_failure): {msg}")
    elif outcome.finished:
        progress.say(f"{outcome.finished} stage runs finished ({outcome.already} already were); "
                     f"store: {uri}")
    for name in outcome.trained_anyway:
        progress.say(f"  trained although the suite expects it to fail: {name}")
