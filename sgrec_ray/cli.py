"""The ``sgrec`` command and the shared argument parsing of ``jobs/*.py``.

``sgrec run CONFIG --stages data,sid --set sft.epochs=3`` and
``ray job submit -- python jobs/pipeline.py --config CONFIG --set ...`` end in the same call:
``sgrec_ray.pipeline.run(cfg, stages, force)``.

The config is loaded in one place per entry point, and every error a user can fix (a bad config
key, a missing stage, a model not found) reaches :func:`_guarded`, which prints it as one
``error:`` line. Commands import their packages when they run (``# lazy:``), so ``sgrec --help``
and ``sgrec config`` start without loading torch or Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sgrec_ray import storage
from sgrec_ray.config import Config, load_config
from sgrec_ray.errors import is_user_error, one_line
from sgrec_ray.runs import RunContext, resolve_adapter


def _guarded(fn: Callable[[], int], debug: bool) -> int:
    """Run a command; an error the user can fix is one ``error:`` line (exit 2), its traceback
    only with ``--debug``. Anything else is a bug and propagates with its traceback."""
    try:
        return fn()
    except Exception as err:
        if not is_user_error(err):
            raise
        if debug:
            traceback.print_exc()
        print(one_line(err), file=sys.stderr)
        return 2


EXAMPLE_CONFIG = "experiment YAML, e.g. configs/ml100k.yaml"

# --debug on every subcommand (argparse parents), so it can go anywhere after the subcommand.
_DEBUG = argparse.ArgumentParser(add_help=False)
_DEBUG.add_argument(
    "--debug", action="store_true", help="show the traceback of errors (normally one line)"
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _config_args(p: argparse.ArgumentParser, config_help: str, *, flag: bool = False) -> None:
    """The experiment config (positional for ``sgrec``, ``--config`` for ``jobs/*.py``) and its
    ``--set`` overrides: what every command that reads a config takes."""
    if flag:
        p.add_argument("--config", required=True, help=config_help)
    else:
        p.add_argument("config", help=config_help)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set sft.epochs=3 (repeatable)",
    )


def _add_run_args(p: argparse.ArgumentParser, stages_default: str | None) -> None:
    p.add_argument(
        "--stages",
        default=stages_default,
        help="comma-separated stages to run (default: data,sasrec,sid,sft,eval)",
    )
    p.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    p.add_argument("-v", "--verbose", action="store_true")


def _run(cfg: Config, stages: str | None, force: bool) -> int:
    # lazy: the pipeline loads torch and Ray
    from sgrec_ray import pipeline
    from sgrec_ray.eval.stage import format_table

    report = pipeline.run(cfg, pipeline.parse_stages(stages), force=force)
    if report.get("methods"):
        print()
        print(format_table(report["methods"]))
    print(f"\nreport: {storage.join(RunContext(cfg).run_uri, 'report.md')}")
    return 0


def job_main(default_stages: str | None, argv: list[str] | None = None) -> int:
    """Entry point of ``jobs/*.py``: ``--config`` plus the same flags as ``sgrec run``."""
    p = argparse.ArgumentParser(
        description=f"sgrec-ray job (stages: {default_stages or 'data,sasrec,sid,sft,eval'})",
        parents=[_DEBUG],
    )
    _config_args(p, EXAMPLE_CONFIG, flag=True)
    _add_run_args(p, default_stages)
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    return _guarded(
        lambda: _run(load_config(args.config, args.overrides), args.stages, args.force), args.debug
    )


def _serve(cfg: Config, demo: bool) -> int:
    """``sgrec serve``: the run's latest generator behind Ray Serve on cfg.serve.host:port."""
    # serve_apps/ sits next to the package (repo root, or /home/ray/sgrec-ray in the image); it must
    # be importable here and in the replicas: a local Ray started below inherits PYTHONPATH.
    root = next(
        (
            p
            for p in (Path.cwd(), Path(__file__).resolve().parents[1])
            if (p / "serve_apps" / "recommender.py").is_file()
        ),
        None,
    )
    if root is None:
        print("error: serve_apps/ not found; run from the repository root", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH")) if p
    )
    from ray import serve

    from serve_apps.recommender import build_app

    # lazy: Ray Serve and the serving packages load only for this command
    from sgrec_ray.ray_utils import ensure_ray
    from sgrec_ray.serving.auth import TokenStore, demo_without_auth
    from sgrec_ray.serving.sources import resolve_sources

    s = cfg.serve
    token = None
    if demo_without_auth(demo, s.host, s.auth_tokens_env, s.auth_tokens_file):
        print(f"auth off: --demo on loopback {s.host}; set {s.auth_tokens_env} to require tokens")
    else:  # fail here, in seconds, rather than in a replica that never becomes healthy
        token = TokenStore.load(s.auth_tokens_env, s.auth_tokens_file).tokens()[0]
    sources = resolve_sources(cfg)
    ensure_ray(cfg)
    serve.start(
        http_options={"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s}
    )
    app = build_app(cfg, sources, auth=token is not None)
    serve.run(app, name=s.app_name, route_prefix=s.route_prefix)
    url = f"http://{s.host}:{s.port}{s.route_prefix.rstrip('/')}"
    print(f"serving {sources.checkpoint} at {url}/v1/recommend (docs: {url}/docs)")
    try:
        if demo:
            _demo_request(url, sources.data, token)
        else:
            print("Ctrl-C stops the endpoint")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(s.app_name)
    return 0


def _demo_request(url: str, data_uri: str, token: str | None) -> None:
    """One real request for the first user of the data, printed as a curl call and its answer."""
    from sgrec_ray.data.schema import INTERACTIONS_FILE  # lazy: pyarrow, for --demo only

    users = storage.read_table(storage.join(data_uri, INTERACTIONS_FILE), columns=["user_id"])
    body = json.dumps({"user_id": users.column("user_id")[0].as_py(), "k": 5})
    headers = {"content-type": "application/json"}
    auth = ""
    if token:
        headers["authorization"] = f"Bearer {token}"
        auth = ' -H "authorization: Bearer <token>"'
    print(f"\n$ curl -s {url}/v1/recommend -H 'content-type: application/json'{auth} -d '{body}'")
    request = urllib.request.Request(f"{url}/v1/recommend", body.encode(), headers)
    with urllib.request.urlopen(request, timeout=60) as response:  # stdlib: no extra dependency
        print(json.dumps(json.load(response), indent=2))


def _experiment(cfg: Config, force: bool) -> int:
    """``sgrec experiment``: the RL comparison over seeds + the semantic-rate study (issue 4)."""
    # lazy: the experiment loads torch and Ray
    from sgrec_ray.experiment import run_experiment
    from sgrec_ray.rl.experiment_report import format_experiment_table, format_study_table

    metrics = run_experiment(cfg, force=force)
    print()
    print(format_experiment_table(metrics))
    print()
    print(format_study_table(metrics["semantic_rate_study"]))
    print()
    print("\n".join(f"- {line}" for line in metrics["reading"]))
    run_uri = storage.join(cfg.run.storage, cfg.run.name)
    print(f"\nreport: {storage.join(run_uri, 'report.md')}  ({metrics['wall_s']} s)")
    return 0


def experiment_main(argv: list[str] | None = None) -> int:
    """Entry point of ``jobs/experiment.py``: ``--config`` plus ``--set`` / ``--force``."""
    p = argparse.ArgumentParser(
        description="sgrec-ray experiment job (issue 4 comparison)", parents=[_DEBUG]
    )
    _config_args(p, EXAMPLE_CONFIG, flag=True)
    p.add_argument("--force", action="store_true", help="retrain arms that already finished")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    return _guarded(
        lambda: _experiment(load_config(args.config, args.overrides), args.force), args.debug
    )


def _annotate(cfg: Config, args: argparse.Namespace) -> int:
    """``sgrec annotate``: the teacher drafts a review sheet, or a reviewed sheet becomes labels.

    Reads the run's data stage (items, interactions); the teacher is ``judge.*`` of the config
    (point ``judge.model`` at a big model, or ``judge.engine`` stays transformers on a GPU).
    """
    import pyarrow.compute as pc

    # lazy: the judge loads transformers and torch
    from sgrec_ray.align import annotate
    from sgrec_ray.align.labels import item_index
    from sgrec_ray.data import schema
    from sgrec_ray.judge.checks import check_engine, preflight, require_in_process
    from sgrec_ray.judge.scoring import Judge

    cfg = resolve_adapter(cfg)  # the aligned judge can be a teacher too
    if args.action == "draft":  # the teacher runs in-process: refuse what cannot, in seconds
        check_engine(cfg)
        require_in_process(cfg.judge, "sgrec annotate draft")
        preflight(cfg.judge)
    ctx = RunContext(cfg)
    ctx.require("data")
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE)).sort_by("item_idx")
    interactions = storage.read_table(ctx.path("data", schema.INTERACTIONS_FILE))
    rejects_uri = args.out + ".rejects.parquet"
    if args.action == "draft":
        users_uri = ctx.path("data", schema.USERS_FILE)
        users = storage.read_table(users_uri) if storage.exists(users_uri) else None
        teacher = Judge(dataclasses.replace(cfg.judge, evidence=True), items, users)
        requests = annotate.sample_requests(
            interactions,
            args.users,
            args.per_user,
            cfg.judge.long_history + cfg.judge.recent_history,
            seed=cfg.run.seed,
        )
        print(f"drafting {len(requests)} labels with {annotate.teacher_source(teacher)} ...")
        labels, rejects = annotate.draft(teacher, requests, items)
        annotate.export_sheet(labels, args.out, items, interactions)
        print(f"review sheet: {args.out} ({labels.num_rows} rows)")
    else:
        labels, rejects = annotate.import_sheet(
            args.sheet,
            cfg.judge.aspects,
            cfg.judge.scale,
            item_index(items),
            default_reviewer=args.reviewer,
        )
        storage.write_table(args.out, labels)
        sources = pc.value_counts(labels.column("source")).to_pylist() if labels.num_rows else []
        print(f"labels: {args.out} ({labels.num_rows} rows; by source {sources})")
        print(f"use them with: --set align.labels_path={args.out}")
    if rejects.num_rows:
        storage.write_table(rejects_uri, rejects)
        reasons = pc.value_counts(rejects.column("reason")).to_pylist()
        print(f"rejected {rejects.num_rows} rows {reasons}: {rejects_uri}")
    return 0


def _export_judge(cfg: Config, out: str | None) -> int:
    """``sgrec export-judge``: the judge as a safetensors folder for judge.engine=vllm."""
    from sgrec_ray.judge.export import export_judge  # lazy: transformers and torch

    written = export_judge(cfg, out)
    print(json.dumps(written, indent=2))
    print(f"use it with: --set judge.engine=vllm --set judge.model={written['out']}")
    return 0


def export_judge_main(argv: list[str] | None = None) -> int:
    """Entry point of ``jobs/export_judge.py``: ``--config`` plus ``--set`` / ``--out``."""
    p = argparse.ArgumentParser(description="sgrec-ray export-judge job", parents=[_DEBUG])
    _config_args(p, EXAMPLE_CONFIG, flag=True)
    p.add_argument("--out", default=None, help="default: <storage>/<run>/judge_model")
    args = p.parse_args(argv)
    _setup_logging(False)
    return _guarded(
        lambda: _export_judge(load_config(args.config, args.overrides), args.out), args.debug
    )


def _synth(args: argparse.Namespace) -> int:
    """Write a synthetic log + catalogue and print the figures and the overrides that read it."""
    from sgrec_ray.data import synth  # lazy: Ray Data

    spec = synth.SynthSpec(
        n_events=args.events,
        n_users=args.users,
        n_items=args.items,
        n_topics=args.topics,
        shards=args.shards,
        seed=args.seed,
        bad_rows=args.bad_rows,
    )
    figures = synth.write(args.out, spec)
    print(json.dumps(figures, indent=2))
    print("read it with: " + " ".join(f"--set {o!r}" for o in synth.data_overrides(args.out)))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sgrec", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    run_p = sub.add_parser(
        "run", help="run pipeline stages for an experiment config", parents=[_DEBUG]
    )
    _config_args(run_p, EXAMPLE_CONFIG)
    _add_run_args(run_p, None)

    show_p = sub.add_parser(
        "config", help="print the fully resolved config as JSON", parents=[_DEBUG]
    )
    _config_args(show_p, EXAMPLE_CONFIG)

    sub.add_parser("stages", help="list the pipeline stages", parents=[_DEBUG])

    serve_p = sub.add_parser(
        "serve", help="serve the run's latest generator over HTTP (Ray Serve)", parents=[_DEBUG]
    )
    _config_args(serve_p, "experiment YAML whose run is served (see its serve section)")
    serve_p.add_argument(
        "--demo", action="store_true", help="send one request, print it and the answer, then stop"
    )
    serve_p.add_argument("-v", "--verbose", action="store_true")

    exp_p = sub.add_parser(
        "experiment",
        help="SFT vs GRPO / Reward-Sum / Adv-Sum / A2PO over seeds + rate study",
        parents=[_DEBUG],
    )
    _config_args(exp_p, EXAMPLE_CONFIG)
    exp_p.add_argument("--force", action="store_true", help="retrain arms that already finished")
    exp_p.add_argument("-v", "--verbose", action="store_true")

    ann_p = sub.add_parser(
        "annotate",
        help="draft judge labels with a teacher for review, or import a reviewed sheet",
        parents=[_DEBUG],
    )
    _config_args(ann_p, "experiment YAML whose data stage has run")
    ann_sub = ann_p.add_subparsers(dest="action", required=True)
    draft_p = ann_sub.add_parser("draft", help="teacher-drafted labels → a review sheet (CSV)")
    draft_p.add_argument("--users", type=int, default=20, help="users to sample")
    draft_p.add_argument("--per-user", type=int, default=3, help="events per user to label")
    draft_p.add_argument("--out", required=True, help="the review sheet to write (CSV, any URI)")
    import_p = ann_sub.add_parser("import", help="a reviewed sheet → labels (Parquet)")
    import_p.add_argument("sheet", help="the reviewed CSV")
    import_p.add_argument("--out", required=True, help="labels to write (Parquet, any URI)")
    import_p.add_argument(
        "--reviewer", default=None, help="reviewer of rows whose reviewer cell is empty"
    )

    export_p = sub.add_parser(
        "export-judge",
        help="write the judge model as a Hugging Face safetensors folder (what vLLM loads)",
        parents=[_DEBUG],
    )
    _config_args(export_p, "experiment YAML whose judge.model is exported")
    export_p.add_argument(
        "--out",
        default=None,
        help="folder to write, any URI (default: <storage>/<run>/judge_model)",
    )

    synth_p = sub.add_parser(
        "synth",
        help="write a synthetic log (Parquet shards) + item catalogue of any size",
        parents=[_DEBUG],
    )
    synth_p.add_argument("out", help="output folder, any URI (events/ and items.parquet)")
    synth_p.add_argument("--events", type=int, required=True, help="events, e.g. 10000000")
    synth_p.add_argument("--users", type=int, default=None, help="default: events / 50")
    synth_p.add_argument("--items", type=int, default=None, help="default: events / 100")
    synth_p.add_argument("--topics", type=int, default=50)
    synth_p.add_argument("--shards", type=int, default=None, help="default: one per 1M events")
    synth_p.add_argument("--seed", type=int, default=0)
    synth_p.add_argument("--bad-rows", type=int, default=3, help="bad rows per reject reason")

    args = p.parse_args(argv)
    return _guarded(lambda: _dispatch(args), args.debug)


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "synth":
        _setup_logging(False)
        return _synth(args)
    if args.cmd == "stages":
        from sgrec_ray.pipeline import STAGES  # lazy: reads the table, runs no stage

        for s in STAGES.values():
            print(f"{s.name:9s} needs {','.join(s.needs) or '-':16s} config {','.join(s.sections)}")
        return 0
    # Every other command reads an experiment config: loaded here, once; a ConfigError is one
    # `error:` line from _guarded.
    cfg = load_config(args.config, args.overrides)
    if args.cmd == "config":
        from sgrec_ray.judge.checks import check_engine  # lazy: the judge package

        check_engine(cfg)  # judge.engine's own rules: the config layer knows no engine
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    _setup_logging(getattr(args, "verbose", False))
    commands: dict[str, Callable[[], int]] = {
        "run": lambda: _run(cfg, args.stages, args.force),
        "serve": lambda: _serve(cfg, args.demo),
        "experiment": lambda: _experiment(cfg, args.force),
        "annotate": lambda: _annotate(cfg, args),
        "export-judge": lambda: _export_judge(cfg, args.out),
    }
    return commands[args.cmd]()


if __name__ == "__main__":
    sys.exit(main())
