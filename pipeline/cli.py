"""The command line: ``sdedit run | validate | sheet | inspect | tune-t0 | fields | eval`` (or ``python -m pipeline``).

Exit codes: 0 every output written; 2 the job could not run (bad spec, model, manifest, output
folder in use, or the cluster failed); 3 the job ran but some items failed (see the index's
``status`` and ``error`` columns). Ray is imported only by the commands that need it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

EXIT_OK, EXIT_CANNOT_RUN, EXIT_ITEMS_FAILED = 0, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdedit", description="SDEdit over a manifest of guides, as a Ray Data batch job.",
        epilog="Exit codes: 0 all outputs written, 2 job could not run, 3 some items failed.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (("run", "run a job"), ("validate", "check a job file without running it")):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("job", help="job file (YAML)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a field, e.g. --set sampling.t0=0.4 (value parsed as YAML); repeatable")
        if name == "run":
            p.add_argument("--address", default=None,
                           help="Ray cluster address: 'auto' joins the cluster `ray start` made on this machine "
                           "(default: $RAY_ADDRESS, else a private local Ray instance that joins nothing)")
            p.add_argument("--no-sheet", action="store_true", help="do not draw OUT/sheet.png")
            p.add_argument("--verbose", action="store_true",
                           help="show Ray's own logs and progress bars on the console (by default they go only "
                           "to Ray's log folder, printed at the end, and sdedit prints its own progress line)")
            again = p.add_mutually_exclusive_group()
            again.add_argument("--resume", action="store_true",
                               help="keep the outputs OUT's index lists as done, make the rest "
                               "(= --set output.if_exists=resume)")
            again.add_argument("--overwrite", action="store_true",
                               help="delete OUT's outputs and redo everything (= --set output.if_exists=overwrite)")
    p = sub.add_parser("sheet", help="(re)draw the contact sheet OUT/sheet.png of a finished run")
    p.add_argument("out", help="output folder URI of a run")
    p.add_argument("--items", type=int, default=16, help="items on the sheet (default 16)")
    p = sub.add_parser("inspect", help="report on a run: counts, failures, throughput, t0 and faithfulness")
    p.add_argument("out", help="output folder URI of a run")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--draw", action="store_true", help="draw the contact and sweep sheets that are missing "
                   "(inspect writes nothing into OUT unless asked)")
    p.add_argument("--no-sheet", action="store_true", help=argparse.SUPPRESS)  # the former default; now a no-op
    p.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec storage option for OUT and the guides (value parsed as YAML); repeatable")
    _tune_parser(sub)
    sub.add_parser("fields", help="list every job-file field with its default")
    sub.add_parser("eval", help="quality evaluation (pipeline.quality.harness; its own --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdedit`` console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["eval"]:
        from pipeline.quality.harness import main as harness_main

        return int(harness_main(args_list[1:]) or 0)
    args = _parser().parse_args(args_list)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "fields":
        from pipeline.reference import render_fields

        print(render_fields())
        return EXIT_OK
    if args.command == "sheet":
        return _sheet(args.out, args.items)
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "tune-t0":
        return _tune(args)
    return _validate(args.job, args.overrides) if args.command == "validate" else _run(args)


def _load(job: str, overrides: list[str]):  # -> JobSpec | None
    from pipeline.jobfile import SpecError, load_spec

    try:
        return load_spec(job, overrides)
    except SpecError as e:
        _fail(f"{job}: invalid job", e)
        return None


def _fail(headline: str, error: Exception) -> None:
    from pipeline.redact import redact_text

    print(f"sdedit: {headline}:", file=sys.stderr)
    for line in redact_text(str(error)).splitlines():
        print(f"  {line}", file=sys.stderr)


def _validate(job: str, overrides: list[str]) -> int:
    from pipeline.jobfile import SpecError
    from pipeline.outdir import OutputExistsError, check_output
    from pipeline.run import preflight

    spec = _load(job, overrides)
    if spec is None:
        return EXIT_CANNOT_RUN
    try:
        plan = preflight(spec)
        check_output(spec)
    except (SpecError, OutputExistsError) as e:
        _fail(f"{job}: cannot run", e)
        return EXIT_CANNOT_RUN
    s = spec.sampling
    print(f"{job}: ok: model {plan.label} ({plan.sde}, {plan.channels} channel(s), "
          f"{plan.height}x{plan.width}); {s.sampler}, t0={s.t0}, {plan.steps} steps x {s.passes} pass(es), "
          f"{s.samples} sample(s)/item; output {spec.output.uri}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    again = ["output.if_exists=resume"] if args.resume else ["output.if_exists=overwrite"] if args.overwrite else []
    spec = _load(args.job, [*args.overrides, *again])
    if spec is None:
        return EXIT_CANNOT_RUN
    from pipeline.run import preflight, ray_address, ray_connected, run_job

    if args.address and spec.resources.executor == "local":
        _fail(f"{args.job}: cannot run", ValueError(
            f"--address {args.address} names a Ray cluster, but resources.executor is local (this process, no Ray); "
            "drop one of them"))
        return EXIT_CANNOT_RUN

    def start_ray() -> None:  # only when the job runs on Ray (pipeline.local.choose_executor)
        import ray

        # Workers' output goes to Ray's log files, not the console, unless --verbose.
        ray.init(address=ray_address(args.address), log_to_driver=args.verbose,
                 logging_level=logging.WARNING if args.verbose else logging.ERROR)
        if not args.verbose:
            _quiet_ray_data()

    try:
        plan = preflight(spec)  # manifests, model and spec checked before Ray starts: a bad job fails fast
        summary = run_job(spec, sheet=not args.no_sheet, plan=plan, address=args.address, connect=start_ray)
    except ValueError as e:  # SpecError, ManifestError, OutputExistsError: nothing ran
        _fail(f"{args.job}: cannot run", e)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        print("sdedit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the cluster or an unexpected bug stopped the job
        from pipeline.redact import redact_text

        print(redact_text(traceback.format_exc()), file=sys.stderr, end="")
        _fail(f"{args.job}: the job failed", RuntimeError(f"{type(e).__name__}: {str(e)[:2000]}"))
        return EXIT_CANNOT_RUN
    print(summary.render())
    if ray_connected() and not args.verbose:
        print(f"        Ray's logs: {_ray_log_dir()} (--verbose shows them on the console)")
    return summary.exit_code


def _quiet_ray_data() -> None:
    """Ray Data's per-operator progress logs and start banners off the console (they stay in its log file)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _ray_log_dir() -> str:
    try:
        from ray._private.worker import global_worker  # the documented way has no public accessor yet

        return global_worker.node.get_logs_dir_path()
    except Exception:  # noqa: BLE001
        return "/tmp/ray/session_latest/logs"


def _sheet(out: str, items: int) -> int:
    from pipeline.sheet import make_sheet
    from pipeline.sweep import write_sweep_views

    try:
        print(make_sheet(out, items=items))
        for uri in write_sweep_views(out, items=min(items, 8)):  # only when the index has several t0
            print(uri)
    except (OSError, ValueError, KeyError) as e:
        _fail(f"no contact sheet for {out}", e)
        return EXIT_CANNOT_RUN
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    import json

    import yaml

    from pipeline.report import inspect_output, render

    try:
        options = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.options)}
        report = inspect_output(args.out, options, input_options=options, draw=args.draw)
    except (OSError, ValueError, KeyError, yaml.YAMLError) as e:
        _fail(f"cannot inspect {args.out}", e)
        return EXIT_CANNOT_RUN
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return EXIT_OK


def _tune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune-t0", help="binary-search t0 for a target faithfulness L2 on a sample of the manifest",
                       description="The paper's practice: bisect t0 on a few guides until their mean "
                       "faithfulness L2 (the index's faithfulness_l2) meets the target, then write a copy "
                       "of the job with sampling.t0 set. Exit 0: within tolerance; 3: written, closest "
                       "probe only; 2: nothing written (bad job, target out of reach).")
    p.add_argument("job", help="job file (YAML)")
    p.add_argument("--target-l2", type=float, required=True,
                   help="target mean faithfulness L2 (RMS per pixel, pixels in [0, 1]), e.g. 0.2")
    p.add_argument("--sample", type=int, default=8, help="manifest items to tune on (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draw of items (default 0)")
    p.add_argument("--tolerance", type=float, default=0.01, help="accepted |L2 - target| (default 0.01)")
    p.add_argument("--lo", type=float, default=0.05, help="lowest t0 searched (default 0.05)")
    p.add_argument("--hi", type=float, default=1.0, help="highest t0 searched (default 1.0)")
    p.add_argument("--max-iters", type=int, default=8, help="bisection probes after the two ends (default 8)")
    p.add_argument("--out", default=None, help="tuned job file to write (default: JOB's name + .tuned.yaml)")
    p.add_argument("--address", default=None, help=argparse.SUPPRESS)  # former option: tune-t0 never needs Ray


def _tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.jobfile import SpecError

    problems = [f"{flag} must be in (0, 1]" for flag, v in (("--lo", args.lo), ("--hi", args.hi)) if not 0 < v <= 1]
    problems += ["--lo must be below --hi"] if args.lo >= args.hi else []
    problems += [f"{flag} must be positive" for flag, v in (("--sample", args.sample),
                                                            ("--tolerance", args.tolerance)) if v <= 0]
    if problems:
        _fail(f"{args.job}: cannot tune", ValueError("\n".join(problems)))
        return EXIT_CANNOT_RUN
    spec = _load(args.job, [])
    if spec is None:
        return EXIT_CANNOT_RUN
    from pipeline.run import preflight
    from pipeline.tune import L2Probe, TargetOutOfReach, bisect_t0, sample_guides, write_tuned_job

    out = args.out or str(Path(args.job).with_suffix("")) + ".tuned.yaml"
    try:
        plan = preflight(spec)
        work = sample_guides(spec, plan, args.sample, args.seed)
        print(f"tune-t0: {work.num_rows} item(s) drawn with seed {args.seed}; model {plan.label}; "
              f"{spec.sampling.sampler}, target L2 {args.target_l2:g} ± {args.tolerance:g}, "
              f"t0 in [{args.lo}, {args.hi}]")
        result = bisect_t0(L2Probe(spec, plan, work), args.target_l2, lo=args.lo, hi=args.hi,
                           tolerance=args.tolerance, max_iters=args.max_iters,
                           on_probe=lambda p: print(f"  probe t0={p.t0:<7g} mean L2 {p.l2:.4f}  (n={p.n})"))
    except (SpecError, TargetOutOfReach, ValueError, RuntimeError) as e:  # RuntimeError: no output at a t0
        _fail(f"{args.job}: cannot tune", e)
        return EXIT_CANNOT_RUN
    note = f"sdedit tune-t0 --target-l2 {args.target_l2:g}: mean L2 {result.l2:.4f} on {work.num_rows} items"
    kept = write_tuned_job(args.job, out, result.t0, note)
    verdict = "within" if result.converged else "NOT within (closest probe)"
    print(f"chosen t0 = {result.t0:g}: mean L2 {result.l2:.4f}, {verdict} {args.tolerance:g} of {args.target_l2:g}")
    print(f"wrote {out} (sampling.t0: {result.t0:g}; "
          + ("the rest of the file as it was)" if kept else "YAML rewritten: comments dropped)"))
    return EXIT_OK if result.converged else EXIT_ITEMS_FAILED


if __name__ == "__main__":
    sys.exit(main())
