"""The generator: a small causal LM over SID tokens, built by name or grown from a pretrained LM.

Two ways to get one:

* ``build_model(size, vocab_size)``: a from-scratch Llama-style model with nanochat-like named sizes
  (``tiny`` for tests, ``small`` for ML-100k on a laptop CPU, ``base`` for GPUs). Its vocabulary *is*
  the SID vocabulary (PAD=0, BOS=1, EOS=2, then one block of tokens per SID level), so our token
  ids are the model's ids. ``layout="item"`` gives one position per item instead of one per token
  (``generator.item_layout``), behind the same token interface.
* ``load_pretrained(path, level_sizes)``: the MiniOneRec setting. A Hugging Face causal LM gets one
  new token per SID code (``<a_12>``…) plus ``<sid_bos>``/``<sid_eos>``, its embeddings are resized,
  and ``token_map`` (int64 [sid_vocab_size]) maps our ids to the model's ids.

Every other module works in our SID ids and maps through ``token_map`` only at the model boundary,
so the two settings share encoding, training and decoding.

Checkpoint directory layout (written by :func:`save_generator`, read by :func:`load_generator`)::

    config.json, model.safetensors, …   Hugging Face ``save_pretrained`` output (+ tokenizer files
                                        for a pretrained base)
    item_head.safetensors               the code head (item layout only)
    sid_vocab.json                      the SID vocabulary (``SidVocab.to_json``)
    item_tokens.npy                     int64 [n_items, depth]: row i = SID token ids of item_idx i
    generator.json                      size, vocab sizes, token_map, max_history, epoch, step
    train_state.pt                      optimizer/scheduler state (Ray Train checkpoints only)

With ``item_tokens.npy`` inside, a checkpoint alone is enough to decode: eval and Serve need no
other artifact of the run.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from sgrec_ray import storage
from sgrec_ray.errors import CheckpointError
from sgrec_ray.generator.item_layout import HEAD_FILE, ItemLayoutLM

PAD, BOS, EOS = 0, 1, 2  # the SID vocabulary's special tokens (same as sgrec_ray.sid.trie)
N_SPECIAL = 3

GENERATOR_FILE = "generator.json"
SID_VOCAB_FILE = "sid_vocab.json"
ITEM_TOKENS_FILE = "item_tokens.npy"
TRAIN_STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class ModelSize:
    """The few numbers that define a from-scratch generator (nanochat's GPTConfig spirit)."""

    n_layer: int
    n_head: int
    d_model: int
    d_ff: int
    max_positions: int = 1024


# One table of named sizes; an unknown name errors with sorted(SIZES) so messages never drift.
SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(n_layer=2, n_head=2, d_model=32, d_ff=64),  # tests: builds and steps in ms
    "small": ModelSize(n_layer=2, n_head=4, d_model=128, d_ff=384),  # ML-100k on 2 CPU cores
    "base": ModelSize(n_layer=8, n_head=8, d_model=512, d_ff=1536, max_positions=2048),  # GPUs
}


LAYOUTS = ("token", "item")


def build_model(
    size: str,
    vocab_size: int,
    seed: int | None = None,
    layout: str = "token",
    depth: int | None = None,
) -> PreTrainedModel:
    """A from-scratch Llama-style generator whose vocabulary is the SID vocabulary.

    Llama (RMSNorm, RoPE, SwiGLU) rather than GPT-2: no learned position table to outgrow, and the
    KV-cache path that beam search relies on is the best-trodden one in transformers.
    ``layout="token"``: a causal LM over SID tokens (one position per code). ``layout="item"``:
    one position per item with a code head (``generator.item_layout``; needs the SID ``depth``).
    """
    if size not in SIZES:
        raise ValueError(f"generator.size {size!r} unknown; allowed values: {sorted(SIZES)}")
    if layout not in LAYOUTS:
        raise ValueError(f"generator.layout {layout!r} unknown; allowed values: {list(LAYOUTS)}")
    s = SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=s.d_model,
        intermediate_size=s.d_ff,
        num_hidden_layers=s.n_layer,
        num_attention_heads=s.n_head,
        num_key_value_heads=s.n_head,
        max_position_embeddings=s.max_positions,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=True,  # the SID vocabulary is small; tying halves its parameters
    )
    if seed is not None:
        torch.manual_seed(seed)
    lm = LlamaForCausalLM(config)
    if layout == "token":
        return lm
    if not depth:
        raise ValueError("layout 'item' needs the SID depth (levels per item)")
    return cast(PreTrainedModel, ItemLayoutLM(lm, depth, s.d_ff))


def add_dropout(model: PreTrainedModel, p: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Dropout on the token embeddings and on each block's attention and MLP outputs (training only).

    Why: Llama has no residual dropout, and ML-100k (943 users) is small enough for a 2-layer model
    to memorise it; SASRec and BERT4Rec owe much of their MovieLens figures to dropout. Forward hooks
    rather than a config field: inference is untouched (hooks act only in ``train()`` mode) and
    checkpoints stay plain Llama checkpoints that any transformers version loads.
    """
    if p <= 0.0:
        return []
    base = unwrap(model)

    def drop_tensor(module: torch.nn.Module, _args: Any, out: Any) -> Any:
        return torch.nn.functional.dropout(out, p, module.training)

    def drop_first(module: torch.nn.Module, _args: Any, out: Any) -> Any:
        return (torch.nn.functional.dropout(out[0], p, module.training), *out[1:])

    inner = base.get_decoder() if hasattr(base, "get_decoder") else base
    handles = [base.get_input_embeddings().register_forward_hook(drop_tensor)]
    for layer in getattr(inner, "layers", []):
        handles.append(layer.self_attn.register_forward_hook(drop_first))
        handles.append(layer.mlp.register_forward_hook(drop_tensor))
    return handles


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only; norms and biases (1-D) are left alone, as is usual for transformers."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def sid_token_strings(level_sizes: list[int]) -> list[str]:
    """Token strings of our vocabulary in id order: specials then ``<a_0>…`` (MiniOneRec spelling)."""
    names = ["<sid_pad>", "<sid_bos>", "<sid_eos>"]
    for level, n in enumerate(level_sizes):
        names += [f"<{chr(ord('a') + level)}_{c}>" for c in range(n)]
    return names


def load_pretrained(path: str, level_sizes: list[int]) -> tuple[PreTrainedModel, Any, np.ndarray]:
    """A pretrained HF causal LM with SID tokens added: (model, tokenizer, token_map).

    ``token_map[i]`` is the model id of our token ``i``. PAD maps to the tokenizer's pad (or eos)
    token; the rest are new tokens, so their embeddings start from the resize initialisation.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    names = sid_token_strings(level_sizes)
    tokenizer.add_tokens(names[1:], special_tokens=False)
    model.resize_token_embeddings(len(tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.convert_tokens_to_ids(name) for name in names[1:]]
    token_map = np.asarray([pad if pad is not None else 0, *ids], dtype=np.int64)
    return model, tokenizer, token_map


@dataclass
class GeneratorMeta:
    """What ``generator.json`` holds: enough to rebuild, map tokens and report provenance."""

    size: str
    sid_vocab_size: int
    model_vocab_size: int
    depth: int
    n_items: int
    max_history: int
    pretrained: str | None = None
    epoch: int = -1  # last finished epoch (0-based); -1 = untrained
    step: int = 0  # optimizer steps so far
    token_map: list[int] = field(default_factory=list)  # our id -> model id (identity if scratch)
    # Weight of the item-level score when decoding re-ranks the beam (generator.item_scores),
    # chosen on validation by SFT; 0 = beam likelihood alone (and what older checkpoints mean).
    rerank_weight: float = 0.0
    # Best validation NDCG@10 when SFT selected this checkpoint on validation (None otherwise).
    valid_ndcg: float | None = None
    # "token": one position per SID token; "item": one per item (generator.item_layout).
    layout: str = "token"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> GeneratorMeta:
        return cls(**json.loads(text))


def identity_map(vocab_size: int) -> np.ndarray:
    return np.arange(vocab_size, dtype=np.int64)


def unwrap(model: torch.nn.Module) -> PreTrainedModel:
    """The HF model inside a DDP wrapper (Ray's prepare_model) or the model itself."""
    return cast(PreTrainedModel, getattr(model, "module", model))


def save_generator(
    model: torch.nn.Module,
    out_dir: str,
    meta: GeneratorMeta,
    item_tokens: np.ndarray,
    sid_vocab_json: str,
    tokenizer: Any | None = None,
) -> None:
    """Write a checkpoint directory (layout in the module docstring) to a local ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    unwrap(model).save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    np.save(os.path.join(out_dir, ITEM_TOKENS_FILE), np.asarray(item_tokens, dtype=np.int64))
    with open(os.path.join(out_dir, SID_VOCAB_FILE), "w") as f:
        f.write(sid_vocab_json)
    with open(os.path.join(out_dir, GENERATOR_FILE), "w") as f:
        f.write(meta.to_json())


@dataclass
class Generator:
    """A loaded checkpoint: the model plus what decoding needs."""

    model: PreTrainedModel
    meta: GeneratorMeta
    item_tokens: np.ndarray  # int64 [n_items, depth], our SID token ids
    token_map: np.ndarray  # int64 [sid_vocab_size]: our id -> model id
    sid_vocab_json: str


def load_generator_dir(local_dir: str, device: str = "cpu") -> Generator:
    """Load a checkpoint from a local directory (see :func:`load_generator` for URIs).

    Weights come from safetensors (no code runs on load); a corrupted or truncated checkpoint is
    a :class:`CheckpointError` naming it, never a half-loaded model.
    """
    try:
        with open(os.path.join(local_dir, GENERATOR_FILE)) as f:
            meta = GeneratorMeta.from_json(f.read())
        with open(os.path.join(local_dir, SID_VOCAB_FILE)) as f:
            sid_vocab_json = f.read()
        item_tokens = np.load(os.path.join(local_dir, ITEM_TOKENS_FILE)).astype(np.int64)
        model = load_model_dir(local_dir)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"generator checkpoint {local_dir}: cannot load it ({type(err).__name__}: {err}); it "
            "is corrupted or incomplete: retrain it (`sgrec run CONFIG --stages sft --force`) "
            "or point serve.checkpoint at a good one"
        ) from err
    model = model.to(device).eval()  # type: ignore[arg-type]
    token_map = np.asarray(meta.token_map or identity_map(meta.sid_vocab_size), dtype=np.int64)
    return Generator(model, meta, item_tokens, token_map, sid_vocab_json)


def load_model_dir(local_dir: str) -> PreTrainedModel:
    """The model of a checkpoint folder, either layout (the item head's file marks the item one).

    Weights come from safetensors only, so loading runs no code from the folder.
    """
    lm = AutoModelForCausalLM.from_pretrained(local_dir, use_safetensors=True)
    if os.path.exists(os.path.join(local_dir, HEAD_FILE)):
        return cast(PreTrainedModel, ItemLayoutLM.from_dir(lm, local_dir))
    return lm


def load_generator(uri: str, device: str = "cpu") -> Generator:
    """Load a checkpoint from a local path or an ``s3://`` URI (downloaded to a temp dir first)."""
    if storage.is_remote(uri):
        with tempfile.TemporaryDirectory(prefix="sgrec-gen-") as tmp:
            return load_generator_dir(storage.download_dir(uri, tmp), device)
    return load_generator_dir(storage.normalize(uri), device)
