"""ITEMS tables for SID tests, built here so the tests don't depend on the data stage."""

from __future__ import annotations

import itertools

import pyarrow as pa

from sgrec_ray.data.schema import ITEMS

_ADJ = ["Dark", "Silent", "Happy", "Lost", "Golden", "Wild", "Broken", "Secret"]
_NOUN = ["River", "Night", "Empire", "Garden", "Detective", "Voyage", "Kingdom", "Summer"]
_GENRE = ["Comedy", "Horror", "Sci-Fi|Action", "Drama|Romance", "Animation|Children's"]


def make_items(n: int, duplicates: int = 0) -> pa.Table:
    """``n`` movie-like items (ITEMS schema), rows in reverse item_idx order so readers must sort.

    The last ``duplicates`` items copy the text of item 0, so their embeddings (and L-level SIDs)
    collide.
    """
    combos = list(itertools.product(_ADJ, _NOUN, _GENRE))
    rows = []
    for i in range(n):
        adj, noun, genre = combos[(i * 37) % len(combos)]
        title = f"{adj} {noun} ({1950 + i % 50})"
        rows.append((i, f"m{i}", title, f"{title} | {genre}"))
    for j in range(n - duplicates, n):
        rows[j] = (j, f"m{j}", rows[0][2], rows[0][3])
    rows.reverse()
    cols = list(zip(*rows, strict=True))
    return pa.Table.from_arrays([pa.array(c) for c in cols], schema=ITEMS)
