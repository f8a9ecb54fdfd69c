"""User features x for the Stage B aggregator w(x): history embedding + demographics.

Layout of one feature row (``FeatureSpec`` fixes it, so training and serving agree):
``[1 (bias) | mean SID-stage embedding of the last max_history items | one-hot per categorical
demographic column | z-scored numeric columns]``. The bias column means a run with no embeddings and
no demographics still learns a (global) weighting instead of failing.

Why the spec stores URIs rather than copies: the run's artifacts are durable by URI already
(``sid/embeddings.parquet``, ``data/users.parquet``), so a checkpoint stays small and any Ray worker
(the reward service included) can rebuild the exact featurizer from it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgrec_ray import storage
from sgrec_ray.data.schema import read_embeddings

# Columns with more distinct values than this are not one-hot encoded (e.g. zip codes): they would
# add hundreds of sparse features that a few hundred pairs cannot fit.
MAX_CATEGORIES = 32


@dataclass
class FeatureSpec:
    embedding_dim: int = 0
    max_history: int = 50
    categorical: dict[str, list[str]] = field(default_factory=dict)  # column -> vocabulary
    numeric: dict[str, list[float]] = field(default_factory=dict)  # column -> [mean, std]
    dropped: list[str] = field(default_factory=list)  # user columns not used, and why is above
    embeddings_uri: str | None = None
    users_uri: str | None = None

    @property
    def n_features(self) -> int:
        n_cat = sum(len(v) for v in self.categorical.values())
        return 1 + self.embedding_dim + n_cat + len(self.numeric)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls(**json.loads(text))


def fit_spec(
    users: pa.Table | None,
    embedding_dim: int,
    max_history: int,
    embeddings_uri: str | None = None,
    users_uri: str | None = None,
) -> FeatureSpec:
    """Decide the encoding of each user column from the users table (vocabularies, mean/std)."""
    spec = FeatureSpec(
        embedding_dim=embedding_dim,
        max_history=max_history,
        embeddings_uri=embeddings_uri,
        users_uri=users_uri,
    )
    if users is None:
        return spec
    for name in users.column_names:
        if name == "user_id":
            continue
        col = users.column(name)
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
            values = values[np.isfinite(values)]
            if len(values) == 0:
                spec.dropped.append(name)
                continue
            spec.numeric[name] = [float(values.mean()), float(values.std()) or 1.0]
            continue
        vocab = sorted({str(v) for v in col.to_pylist() if v not in (None, "")})
        if 0 < len(vocab) <= MAX_CATEGORIES:
            spec.categorical[name] = vocab
        else:
            spec.dropped.append(name)
    return spec


class UserFeaturizer:
    """Turns (user_id, history item_idx list) into feature rows following a ``FeatureSpec``."""

    def __init__(
        self, spec: FeatureSpec, embeddings: np.ndarray | None, users: pa.Table | None
    ) -> None:
        self.spec = spec
        self.embeddings = embeddings  # [n_items, embedding_dim], row i = item_idx i
        self._demo: dict[str, np.ndarray] = {}
        if users is not None:
            demo = self._encode_users(users)
            ids = users.column("user_id").to_pylist()
            self._demo = {str(u): demo[k] for k, u in enumerate(ids)}
        self._n_demo = spec.n_features - 1 - spec.embedding_dim

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> UserFeaturizer:
        """Load the embeddings and users table the spec points to."""
        embeddings = None
        if spec.embeddings_uri and spec.embedding_dim:
            idx, emb = read_embeddings(storage.read_table(spec.embeddings_uri))
            embeddings = np.zeros((int(idx.max()) + 1, emb.shape[1]), np.float32)
            embeddings[idx] = emb
        users = storage.read_table(spec.users_uri) if spec.users_uri else None
        return cls(spec, embeddings, users)

    def _encode_users(self, users: pa.Table) -> np.ndarray:
        parts = []
        for name, vocab in self.spec.categorical.items():
            index = {v: k for k, v in enumerate(vocab)}
            onehot = np.zeros((users.num_rows, len(vocab)), np.float32)
            if name in users.column_names:
                for row, value in enumerate(users.column(name).to_pylist()):
                    k = index.get(str(value))
                    if k is not None:  # unknown / missing value: all zeros
                        onehot[row, k] = 1.0
            parts.append(onehot)
        for name, (mean, std) in self.spec.numeric.items():
            col = np.zeros(users.num_rows, np.float32)
            if name in users.column_names:
                raw = pc.cast(users.column(name), pa.float64()).to_numpy(zero_copy_only=False)
                col = np.nan_to_num((raw - mean) / std, nan=0.0).astype(np.float32)
            parts.append(col[:, None])
        if not parts:
            return np.zeros((users.num_rows, 0), np.float32)
        return np.concatenate(parts, axis=1)

    def features(self, user_ids: Sequence[str], histories: Sequence[Sequence[int]]) -> np.ndarray:
        """Feature rows [U, n_features]; unknown users get zero demographics, empty histories a
        zero embedding (the bias column still carries them)."""
        spec = self.spec
        out = np.zeros((len(user_ids), spec.n_features), np.float32)
        out[:, 0] = 1.0
        for row, (user, history) in enumerate(zip(user_ids, histories, strict=True)):
            if self.embeddings is not None and spec.embedding_dim:
                recent = [
                    i for i in list(history)[-spec.max_history :] if 0 <= i < len(self.embeddings)
                ]
                if recent:
                    out[row, 1 : 1 + spec.embedding_dim] = self.embeddings[recent].mean(axis=0)
            demo = self._demo.get(str(user))
            if demo is not None and self._n_demo:
                out[row, 1 + spec.embedding_dim :] = demo
        return out


def histories_before(
    interactions: pa.Table, cutoff: int | None, max_history: int
) -> dict[str, list[int]]:
    """Each user's last ``max_history`` items strictly before ``cutoff`` (None: all), oldest first.

    The aggregate stage uses the past of the held-out cutoff, so held-out pairs are scored from
    features that did not see them.
    """
    table = interactions
    if cutoff is not None:
        table = table.filter(pc.less(table.column("timestamp"), pa.scalar(cutoff, pa.int64())))
    # Stable sort keeps file order for same-second ratings (REFERENCES.md: ties are the norm).
    table = table.sort_by([("user_id", "ascending"), ("timestamp", "ascending")])
    users = table.column("user_id").to_pylist()
    items = table.column("item_idx").to_pylist()
    out: dict[str, list[int]] = {}
    for user, item in zip(users, items, strict=True):
        out.setdefault(user, []).append(item)
    return {u: h[-max_history:] for u, h in out.items()}
