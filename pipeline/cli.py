"""The command line: ``sdedit run | validate | sheet | fields | eval`` (also ``python -m pipeline``).

Exit codes: 0 every output written; 2 the job could not run (bad spec, model, manifest, output
folder in use, or the cluster failed); 3 the job ran but some items failed (see the index's
``status`` and ``error`` columns). Ray is imported only by the commands that need it.
"""

from __future__ import annotations

import argparse
import logging
import os
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
                           help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)")
            p.add_argument("--no-sheet", action="store_true", help="do not draw OUT/sheet.png")
            again = p.add_mutually_exclusive_group()
            again.add_argument("--resume", action="store_true",
                               help="keep the outputs OUT's index lists as done, make the rest "
                               "(= --set output.if_exists=resume)")
            again.add_argument("--overwrite", action="store_true",
                               help="delete OUT's outputs and redo everything (= --set output.if_exists=overwrite)")
    p = sub.add_parser("sheet", help="(re)draw the contact sheet OUT/sheet.png of a finished run")
    p.add_argument("out", help="output folder URI of a run")
    p.add_argument("--items", type=int, default=16, help="items on the sheet (default 16)")
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
          f"{s.samples_per_item} sample(s)/item; output {spec.output.uri}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    again = ["output.if_exists=resume"] if args.resume else ["output.if_exists=overwrite"] if args.overwrite else []
    spec = _load(args.job, [*args.overrides, *again])
    if spec is None:
        return EXIT_CANNOT_RUN
    import ray

    from pipeline.run import run_job

    try:
        if not ray.is_initialized():
            address = args.address or os.environ.get("RAY_ADDRESS")
            ray.init(address=address, logging_level=logging.WARNING)
        summary = run_job(spec, sheet=not args.no_sheet)
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
    return summary.exit_code


def _sheet(out: str, items: int) -> int:
    from pipeline.sheet import make_sheet

    try:
        print(make_sheet(out, items=items))
    except (OSError, ValueError, KeyError) as e:
        _fail(f"no contact sheet for {out}", e)
        return EXIT_CANNOT_RUN
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
