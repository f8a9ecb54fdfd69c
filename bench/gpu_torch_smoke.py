"""Torch-level GPU smoke: the model code of every GPU stage on one device, no Ray, no vLLM.

    python bench/gpu_torch_smoke.py                         # cuda in bf16 when there is one
    python bench/gpu_torch_smoke.py --judge-model /runs/ml100k/judge_model   # sgrec export-judge
    python bench/gpu_torch_smoke.py --device cpu --dtype bfloat16 --run /tmp/smoke   # dtype bugs

Why: the CPU suite never puts a tensor on a GPU or runs a model in bf16, so a tensor left on the
CPU, or a float32 constant meeting a bf16 activation, would first fail on a rented GPU inside a
Ray actor. This script runs, from a tiny run folder it makes on CPU (a synthetic catalogue with
semantic IDs, a seeded tiny generator and user histories: well under a MiB), each part twice,
first on CPU in float32 (the reference), then on ``--device`` in ``--dtype``:

- ``sft``: a few next-item steps of the generator (the SFT batch code: ``training_example``,
  ``item_labels``, ``collate``; the HF loss; AdamW);
- ``a2po``: a few policy-gradient steps with beam rollouts (the group is the G best beams of
  ``generator.decode.constrained_beam_search``, what the A2PO rollout draws from; then
  ``rl.rollout.policy_log_probs``, ``rl.objective.policy_loss``, group-normalised rule rewards;
  compared by the rollouts' mean log-probability before each update and the first step's items);
- ``judge``: the transformers judge scoring one batch (``judge.scoring.Judge``);
- ``serve``: one served beam search (``generator.decode.Recommender``).

Training runs under ``torch.autocast`` (weights float32, as mixed precision trains); the judge and
the served generator run with their weights cast to ``--dtype``. It prints one JSON line: per
part its seconds on the device and whether the outputs match the CPU run within the tolerance
(``--tol``, loose enough for bf16). Exit status 1 when a part does not match.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

N_ITEMS, LEVELS, CODES, N_USERS = 48, 3, 4, 16


def make_run(folder: str, seed: int = 0) -> str:
    """The tiny run folder: ``generator/`` (a seeded tiny checkpoint), ``items.json`` (titles
    for the judge's prompts) and ``users.json`` (histories and next items). Kept if present."""
    import torch

    from sgrec_ray.generator.model import GeneratorMeta, build_model, identity_map, save_generator
    from sgrec_ray.sid.trie import SidVocab

    out = Path(folder)
    if (out / "users.json").is_file():
        return str(out)
    rng = np.random.default_rng(seed)
    vocab = SidVocab([CODES] * LEVELS)
    combos = np.array(np.meshgrid(*[range(CODES)] * LEVELS, indexing="ij")).reshape(LEVELS, -1).T
    codes = combos[rng.permutation(len(combos))[:N_ITEMS]]  # distinct SIDs
    item_tokens = np.array([vocab.item_tokens(c) for c in codes], dtype=np.int64)
    torch.manual_seed(seed)
    model = build_model("tiny", vocab.vocab_size, seed=seed)
    meta = GeneratorMeta(
        size="tiny",
        sid_vocab_size=vocab.vocab_size,
        model_vocab_size=vocab.vocab_size,
        depth=LEVELS,
        n_items=N_ITEMS,
        max_history=8,
        token_map=identity_map(vocab.vocab_size).tolist(),
    )
    save_generator(model, str(out / "generator"), meta, item_tokens, vocab.to_json())
    genres = ["Drama", "Comedy", "Action", "Sci-Fi"]
    items = [
        {"item_id": f"i{i}", "title": f"Film {i} ({1980 + i})", "genres": genres[codes[i][0]]}
        for i in range(N_ITEMS)
    ]
    users = []
    for u in range(N_USERS):
        seq = rng.choice(N_ITEMS, size=7, replace=False).tolist()
        users.append({"user_id": f"u{u}", "history": seq[:-1], "target": seq[-1]})
    (out / "items.json").write_text(json.dumps(items))
    (out / "users.json").write_text(json.dumps(users))
    return str(out)


def _autocast(device: str, dtype: Any) -> Any:
    import torch

    return torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def part_sft(run: str, device: str, dtype: Any, steps: int) -> dict[str, Any]:
    """Losses of ``steps`` SFT steps on the users' sequences (history + next item)."""
    import torch

    from sgrec_ray.generator.encoding import collate, item_labels, training_example
    from sgrec_ray.generator.model import load_generator_dir

    gen = load_generator_dir(os.path.join(run, "generator"), device)
    users = json.loads(Path(run, "users.json").read_text())
    seqs = [u["history"] + [u["target"]] for u in users]
    examples = [
        (*training_example(s, 1, gen.item_tokens), item_labels(s, 1, gen.item_tokens.shape[1]))
        for s in seqs
    ]
    batch = {k: v.to(device) for k, v in collate(examples, gen.token_map).items()}
    batch.pop("item_labels")
    torch.manual_seed(0)
    model = gen.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        with _autocast(device, dtype):
            loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {"losses": losses}


def part_a2po(run: str, device: str, dtype: Any, steps: int, group: int) -> dict[str, Any]:
    """Policy-gradient steps: beam rollouts, rule rewards normalised per group, clipped loss."""
    import torch

    from sgrec_ray.generator.decode import constrained_beam_search
    from sgrec_ray.generator.model import load_generator_dir
    from sgrec_ray.rl.objective import policy_loss
    from sgrec_ray.rl.rollout import policy_log_probs
    from sgrec_ray.sid.trie import SidTrie, SidVocab

    gen = load_generator_dir(os.path.join(run, "generator"), device)
    trie = SidTrie.from_tokens(gen.item_tokens, SidVocab.from_json(gen.sid_vocab_json))
    users = json.loads(Path(run, "users.json").read_text())
    histories = [u["history"] for u in users]
    targets = torch.tensor([u["target"] for u in users], device=device)
    model = gen.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    logps, rollouts = [], []
    for _ in range(steps):
        model.eval()
        with torch.no_grad(), _autocast(device, dtype):
            found = constrained_beam_search(
                model,
                histories,
                gen.item_tokens,
                beam_width=group,
                k=group,
                device=device,
                token_map=gen.token_map,
                trie=trie,
            )
            items = np.asarray([[i for i, _ in row] for row in found], dtype=np.int64)
            logp_ref = policy_log_probs(
                model, histories, torch.as_tensor(items), gen.item_tokens, gen.token_map
            )
        rollouts.append(items.tolist())
        logps.append(float(logp_ref.float().mean()))
        items_t = torch.as_tensor(items, device=device)
        reward = (items_t == targets[:, None]).double() + 0.1 * (
            items_t % 2 == targets[:, None] % 2
        )  # a rule reward with spread inside every group
        adv = (
            (reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-6)
        ).float()
        model.train()
        with _autocast(device, dtype):
            logp = policy_log_probs(model, histories, items_t, gen.item_tokens, gen.token_map)
        parts = policy_loss(
            logp.float(), logp_ref.float(), logp_ref.float(), adv, clip_eps=0.2, kl_beta=0.04
        )
        opt.zero_grad(set_to_none=True)
        parts.loss.backward()
        opt.step()
    # On-policy, one update per rollout: the loss is -mean(advantage) = 0 by construction, so the
    # rollouts' mean log-probability before each update is what shows the steps differ.
    return {"logp": logps, "rollouts": rollouts}


def part_judge(run: str, device: str, dtype: Any, judge_model: str | None) -> dict[str, Any]:
    """Aspect scores of one batch (every user with its next item) from the transformers judge."""
    import dataclasses

    import pyarrow as pa
    import torch

    from sgrec_ray.config import JudgeSection
    from sgrec_ray.judge.engines import TransformersEngine, resolve_model
    from sgrec_ray.judge.rows import JudgeRequest
    from sgrec_ray.judge.scoring import Judge

    cfg = JudgeSection() if judge_model is None else JudgeSection(model=judge_model)
    cfg = dataclasses.replace(cfg, max_prompt_tokens=384, long_history=6, recent_history=2)
    items = json.loads(Path(run, "items.json").read_text())
    table = pa.table(
        {
            "item_idx": pa.array(range(len(items)), pa.int32()),
            "item_id": [r["item_id"] for r in items],
            "title": [r["title"] for r in items],
            "text": [f"{r['title']}. Genres: {r['genres']}" for r in items],
            "genres": [r["genres"] for r in items],
        }
    )
    users = json.loads(Path(run, "users.json").read_text())[:4]
    requests = [JudgeRequest(u["user_id"], u["history"], u["target"]) for u in users]
    base = _JUDGE_CACHE.get(judge_model)
    if base is None:  # loaded once (float32, CPU); each run casts a copy to its device and dtype
        base = _JUDGE_CACHE[judge_model] = TransformersEngine(resolve_model(cfg))
    model = base.model if device == "cpu" and dtype == torch.float32 else None
    if model is None:
        import copy

        model = copy.deepcopy(base.model).to(dtype=dtype)
    engine = TransformersEngine.from_model(model, base.tokenizer, device=device)
    results = Judge(cfg, table, None, engine=engine).score(requests)
    return {
        "status": [r.status for r in results],
        "scores": [[r.aspects.get(a, float("nan")) for a in cfg.aspects] for r in results],
    }


_JUDGE_CACHE: dict[str | None, Any] = {}


def part_serve(run: str, device: str, dtype: Any, k: int) -> dict[str, Any]:
    """One served beam search (the Serve app's ``Recommender``) for every user."""
    from sgrec_ray.generator.decode import Recommender
    from sgrec_ray.generator.model import load_generator_dir

    gen = load_generator_dir(os.path.join(run, "generator"), device)
    gen.model.to(dtype=dtype)
    rec = Recommender(gen, beam_width=2 * k, device=device)
    users = json.loads(Path(run, "users.json").read_text())
    found = rec.recommend([u["history"] for u in users], k=k)
    return {"items": [[i for i, _ in row] for row in found]}


def compare(name: str, ref: dict[str, Any], got: dict[str, Any], tol: float) -> dict[str, Any]:
    """Whether ``got`` matches the CPU float32 ``ref`` of part ``name``, and by how much."""
    if name in ("sft", "a2po"):
        key = "losses" if name == "sft" else "logp"
        a, b = np.asarray(ref[key]), np.asarray(got[key])
        diff = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-3)))
        out: dict[str, Any] = {f"max_rel_{key}_diff": round(diff, 5), "match": diff <= tol}
        if name == "a2po":  # first step's rollouts come from the same weights on both sides
            overlap = _overlap(ref["rollouts"][0], got["rollouts"][0])
            out["first_rollout_overlap"] = round(overlap, 4)
            out["match"] = out["match"] and overlap >= 1 - tol
        return out
    if name == "judge":
        a, b = np.asarray(ref["scores"]), np.asarray(got["scores"])
        ok = ref["status"] == got["status"] and np.isfinite(b).all()
        diff = float(np.max(np.abs(a - b))) if ok else float("inf")
        return {"max_score_diff": round(diff, 5), "match": ok and diff <= 4 * tol}
    overlap = _overlap(ref["items"], got["items"])
    return {"topk_overlap": round(overlap, 4), "match": overlap >= 1 - tol}


def _overlap(a: list[list[int]], b: list[list[int]]) -> float:
    """Mean share of each row's items found in the other run's row."""
    return float(
        np.mean([len(set(x) & set(y)) / max(len(x), 1) for x, y in zip(a, b, strict=True)])
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", default=None, help="tiny run folder (made here if missing)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--judge-model", default=None, help="judge.model (default: the GGUF judge)")
    p.add_argument("--sft-steps", type=int, default=4)
    p.add_argument("--rl-steps", type=int, default=3)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--tol", type=float, default=0.05, help="relative tolerance against the CPU")
    p.add_argument("--skip", default="", help="comma-separated parts to skip")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tempfile

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    run = make_run(args.run or tempfile.mkdtemp(prefix="sgrec-torch-smoke-"))
    parts = {
        "sft": lambda d, t: part_sft(run, d, t, args.sft_steps),
        "a2po": lambda d, t: part_a2po(run, d, t, args.rl_steps, args.group),
        "judge": lambda d, t: part_judge(run, d, t, args.judge_model),
        "serve": lambda d, t: part_serve(run, d, t, args.k),
    }
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else device,
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "run": run,
    }
    ok = True
    for name, fn in parts.items():
        if name in args.skip.split(","):
            continue
        ref = fn("cpu", torch.float32)
        _sync(device)
        started = time.perf_counter()
        got = fn(device, dtype)
        _sync(device)
        seconds = time.perf_counter() - started
        report[name] = {"s": round(seconds, 3), **compare(name, ref, got, args.tol)}
        ok = ok and report[name]["match"]
    report["all_match"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
