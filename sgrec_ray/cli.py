"""The ``sgrec`` command and the shared argument parsing of ``jobs/*.py``.

``sgrec run CONFIG --stages data,sid --set sft.epochs=3`` and
``ray job submit -- python jobs/pipeline.py --config CONFIG --set ...`` end in the same call:
``sgrec_ray.pipeline.run(cfg, stages, force)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from sgrec_ray.config import ConfigError, load_config


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _add_run_args(p: argparse.ArgumentParser, stages_default: str | None) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set sft.epochs=3 (repeatable)",
    )
    p.add_argument(
        "--stages",
        default=stages_default,
        help="comma-separated stages to run (default: data,sid,sft,eval)",
    )
    p.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    p.add_argument("-v", "--verbose", action="store_true")


def _run(config: str, overrides: list[str], stages: str | None, force: bool) -> int:
    from sgrec_ray import pipeline
    from sgrec_ray.eval.stage import format_table

    try:
        cfg = load_config(config, overrides)
        stage_list = pipeline.parse_stages(stages)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = pipeline.run(cfg, stage_list, force=force)
    if report.get("methods"):
        print()
        print(format_table(report["methods"]))
    from sgrec_ray import storage

    print(f"\nreport: {storage.join(pipeline.RunContext(cfg).run_uri, 'report.md')}")
    return 0


def job_main(default_stages: str | None, argv: list[str] | None = None) -> int:
    """Entry point of ``jobs/*.py``: ``--config`` plus the same flags as ``sgrec run``."""
    p = argparse.ArgumentParser(
        description=f"sgrec-ray job (stages: {default_stages or 'data,sid,sft,eval'})"
    )
    p.add_argument("--config", required=True, help="experiment YAML, e.g. configs/ml100k.yaml")
    _add_run_args(p, default_stages)
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    return _run(args.config, args.overrides, args.stages, args.force)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sgrec", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    run_p = sub.add_parser("run", help="run pipeline stages for an experiment config")
    run_p.add_argument("config", help="experiment YAML, e.g. configs/ml100k.yaml")
    _add_run_args(run_p, None)

    show_p = sub.add_parser("config", help="print the fully resolved config as JSON")
    show_p.add_argument("config")
    show_p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    sub.add_parser("stages", help="list the pipeline stages")

    args = p.parse_args(argv)
    if args.cmd == "run":
        _setup_logging(args.verbose)
        return _run(args.config, args.overrides, args.stages, args.force)
    if args.cmd == "config":
        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if args.cmd == "stages":
        from sgrec_ray.pipeline import STAGES

        for s in STAGES.values():
            print(f"{s.name:6s} needs {','.join(s.needs) or '-':14s} config {','.join(s.sections)}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
