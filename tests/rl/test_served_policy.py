"""RL validates, and exports, exactly the ranking the endpoint serves."""

from __future__ import annotations

import json

import pytest

from sgrec_ray import storage
from sgrec_ray.generator.model import load_generator
from sgrec_ray.generator.validate import validation_rankings
from sgrec_ray.rl.a2po import load_valid, run_prompts, train_policy
from sgrec_ray.serving.engine import ServingModel
from sgrec_ray.serving.schema import parse_request
from sgrec_ray.serving.sources import Sources
from sgrec_ray.sid.trie import SidTrie, SidVocab
from tests.rl.conftest import rl_ctx


@pytest.mark.integration
def test_rl_validation_ranks_exactly_as_the_serving_engine(rl_base, tmp_path):
    ctx = rl_ctx(rl_base, ["rl.steps=2", "rl.eval_every=1", "rl.business_reward=rule"])
    result = train_policy(
        ctx.cfg,
        prompts=run_prompts(ctx),
        sft_uri=ctx.require("sft")["outputs"]["model"],
        stage_uri=str(tmp_path / "a2po"),
        run_name="served",
        valid=load_valid(ctx),
    )
    uri = result.outputs["model"]
    gen = load_generator(uri)
    width = ctx.cfg.sft.valid_beam_width
    chosen = result.metrics["valid"]["rerank_weight"]
    assert gen.meta.rerank_weight == chosen  # the exported checkpoint carries validation's choice
    assert chosen in ctx.cfg.sft.rerank_weights
    valid = load_valid(ctx).slice(0, 12)
    histories = valid.column("history").to_pylist()
    trie = SidTrie.from_tokens(gen.item_tokens, SidVocab.from_json(gen.sid_vocab_json))
    validated = validation_rankings(
        gen.model, histories, gen.item_tokens, trie, gen.token_map, width, [chosen]
    )[chosen]
    engine = ServingModel.load(
        Sources(checkpoint=uri, data=ctx.stage_uri("data"), sid=ctx.stage_uri("sid")),
        beam_width=width,
    )
    ids = engine.catalogue.item_ids
    requests = [
        parse_request(
            json.dumps({"history": [ids[i] for i in h], "k": 10, "exclude_seen": False}).encode(),
            10,
            50,
        )
        for h in histories
    ]
    answers = engine.answer([engine.resolve(r) for r in requests])
    served = [[engine.catalogue.index[it.item_id] for it in a.items] for a in answers]
    assert served == validated
    assert storage.exists(uri)
