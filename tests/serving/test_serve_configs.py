"""The Serve config file and the RayService's serveConfigV2 are valid Serve configs that name our
builder and deployments, and the user_config keys the Model accepts (no Ray needed)."""

from __future__ import annotations

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_apps.recommender import build
from sgrec_ray.serving.replica import LIVE_KEYS, RELOAD_KEYS
from tests.conftest import REPO


def _serve_configs() -> dict[str, dict]:
    service = yaml.safe_load((REPO / "cluster" / "rayservice.yaml").read_text())
    return {
        "serve_apps/config.yaml": yaml.safe_load((REPO / "serve_apps" / "config.yaml").read_text()),
        "serve_apps/config-single.yaml": yaml.safe_load(
            (REPO / "serve_apps" / "config-single.yaml").read_text()
        ),
        "cluster/rayservice.yaml": yaml.safe_load(service["spec"]["serveConfigV2"]),
    }


@pytest.mark.parametrize(("name", "config"), _serve_configs().items())
def test_serve_config_is_valid_and_names_our_app(name, config):
    schema = ServeDeploySchema(**config)
    (app,) = schema.applications
    assert app.import_path == f"{build.__module__}:{build.__name__}"
    assert (REPO / app.args["config"]).is_file()
    deployments = {d.name: d for d in app.deployments}
    # The deployments listed must be the layout's: Serve refuses a name the app does not have.
    split = "serve.layout=single" not in app.args.get("overrides", [])  # split: the default
    assert set(deployments) == ({"Ingress", "Model"} if split else {"Model"})
    assert set(deployments["Model"].user_config) <= {*RELOAD_KEYS, *LIVE_KEYS}
    assert deployments["Model"].max_queued_requests > 0  # overload must be a 503, not a hang
