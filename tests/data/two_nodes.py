"""Run the Ray Data data stage on a two-node local cluster (``ray.cluster_utils.Cluster``).

A separate process because the test session already holds a one-node Ray. Prints one JSON line:
the cluster's node ids, the nodes each step's tasks ran on, and the stage's outputs.

    python -m tests.data.two_nodes <config.yaml> <out folder> [--set key=value ...]
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from sgrec_ray.config import load_config
    from sgrec_ray.data import distributed, stage
    from sgrec_ray.runs import Attempt, RunContext

    config, out, *overrides = argv
    distributed.ROWS_PER_BUCKET = (
        int(next((o.split("=", 1)[1] for o in overrides if o.startswith("ROWS_PER_BUCKET=")), "0"))
        or distributed.ROWS_PER_BUCKET
    )
    overrides = [o.removeprefix("--set=") for o in overrides if not o.startswith("ROWS_")]
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        cfg = load_config(config, overrides)
        ctx = RunContext(cfg)
        ctx.writing["data"] = Attempt("data", "test", "test", out)
        result, figures = stage.build_distributed(ctx)
        print(
            json.dumps(
                {
                    "cluster": nodes,
                    "ran_on": figures.nodes,
                    "outputs": result.outputs,
                    "metrics": result.metrics,
                }
            ),
            flush=True,
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
