"""What a replica needs besides the model: the item catalogue, SIDs, user histories, popularity.

Everything is read from URIs (local or s3://) of the data and sid stage folders, so a replica on a
cluster needs only storage access. :func:`check_compatible` compares the catalogue with a checkpoint
once, at load time: a checkpoint trained on another SID table would otherwise return wrong items
for every request without any error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sgrec_ray import storage
from sgrec_ray.data import schema
from sgrec_ray.errors import UserError
from sgrec_ray.eval.popularity import item_counts_streamed, popularity_ranking
from sgrec_ray.generator.model import Generator
from sgrec_ray.serving.histories import open_histories
from sgrec_ray.sid.trie import SidVocab

SID_TABLE_FILE = "sid_table.parquet"  # written by the sid stage (sgrec_ray.sid.stage)
VOCAB_FILE = "vocab.json"


class CatalogueMismatchError(UserError, ValueError):
    """The checkpoint was not trained on this catalogue's SID table; serving it would be wrong."""


@dataclass
class Catalogue:
    """Items by ``item_idx`` plus per-user histories; all arrays are indexed by item_idx."""

    item_ids: list[str]
    titles: list[str | None]
    sids: list[str]  # display form, e.g. <a_3><b_1><c_7><d_0>
    item_tokens: np.ndarray  # int64 [n_items, depth], SID token ids derived from the sid table
    vocab: SidVocab
    popularity: np.ndarray  # int64 [n_items]: item_idx by descending training-target count
    # user_id -> int32 item_idx, oldest first (every known event): a mapped store, not a copy
    histories: Mapping[str, np.ndarray]
    index: dict[str, int]  # item_id -> item_idx

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def load_catalogue(data_uri: str, sid_uri: str, history_cache: str | None = None) -> Catalogue:
    """Read the catalogue from a data stage folder and a sid stage folder (URIs).

    Item tables are read whole (they grow with the catalogue, not the log); user histories are
    mapped from a node-local store under ``history_cache`` (see :mod:`sgrec_ray.serving.histories`)
    and the popularity counts stream over the training windows in batches.
    """
    items = storage.read_table(storage.join(data_uri, schema.ITEMS_FILE)).sort_by("item_idx")
    n = items.num_rows
    if not np.array_equal(items.column("item_idx").to_numpy(), np.arange(n)):
        raise CatalogueMismatchError(f"{data_uri}: item_idx must be dense 0..{n - 1}")
    sid_table = storage.read_table(storage.join(sid_uri, SID_TABLE_FILE)).sort_by("item_idx")
    if sid_table.num_rows != n:
        raise CatalogueMismatchError(
            f"SID table {sid_uri} has {sid_table.num_rows} items, catalogue {data_uri} has {n}"
        )
    vocab = SidVocab.from_json(storage.read_text(storage.join(sid_uri, VOCAB_FILE)))
    tokens = np.asarray(
        [vocab.item_tokens(c) for c in sid_table.column("codes").to_pylist()], dtype=np.int64
    )
    counts = item_counts_streamed(storage.join(data_uri, schema.TRAIN_FILE), n)
    item_ids = items.column("item_id").to_pylist()
    return Catalogue(
        item_ids=item_ids,
        titles=items.column("title").to_pylist(),
        sids=sid_table.column("sid").to_pylist(),
        item_tokens=tokens,
        vocab=vocab,
        popularity=popularity_ranking(counts),
        histories=open_histories(data_uri, history_cache),
        index={item_id: i for i, item_id in enumerate(item_ids)},
    )


def check_compatible(catalogue: Catalogue, generator: Generator, checkpoint_uri: str) -> None:
    """Raise :class:`CatalogueMismatchError` unless the checkpoint decodes to these items.

    Three checks, cheapest first: item count, SID vocabulary (levels and sizes), and every item's
    SID tokens. Any one failing means beam search would map SIDs to the wrong items.
    """
    where = f"checkpoint {checkpoint_uri}"
    n_ckpt = int(generator.item_tokens.shape[0])
    if n_ckpt != catalogue.n_items or generator.meta.n_items != catalogue.n_items:
        raise CatalogueMismatchError(
            f"{where} knows {n_ckpt} items, the catalogue has {catalogue.n_items}: "
            "serve the checkpoint with the data/sid folders of the run that trained it"
        )
    ckpt_vocab = SidVocab.from_json(generator.sid_vocab_json)
    if (ckpt_vocab.level_sizes, ckpt_vocab.n_special) != (
        catalogue.vocab.level_sizes,
        catalogue.vocab.n_special,
    ):
        raise CatalogueMismatchError(
            f"{where} has SID vocabulary levels {ckpt_vocab.level_sizes}, the SID table has "
            f"{catalogue.vocab.level_sizes}"
        )
    differ = np.flatnonzero((generator.item_tokens != catalogue.item_tokens).any(axis=1))
    if len(differ):
        raise CatalogueMismatchError(
            f"{where}: {len(differ)} of {catalogue.n_items} items have different SIDs than the SID "
            f"table (first item_idx {differ[:5].tolist()})"
        )
