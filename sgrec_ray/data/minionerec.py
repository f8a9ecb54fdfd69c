"""MiniOneRec / Amazon-2018 CSV splits: a *sample-based* source with its own protocol.

Layout of ``data.path``::

    train/*.csv  valid/*.csv  test/*.csv   one row per (user, next item), history oldest first
    info/*.txt                             <sid>\\t<title>\\t<item_id>   (the item catalogue)
    index/*.item.json                      optional: item_id -> {title, description, brand, ...}
    index/*.index.json                     optional: item_id -> ["<a_60>", "<b_159>", "<c_203>"]

CSV columns: ``user_id, history_item_title, item_title, history_item_id, item_id,
history_item_sid, item_sid``; the list columns are Python literals (``ast.literal_eval``).

There are no timestamps: MiniOneRec already cut the samples chronologically 8:1:1, so we keep its
split as is instead of re-splitting. valid/test rows become SAMPLES (history truncated to
``max_history``), train rows become SEQUENCES (``items = history + [target]``, ``loss_from =
len(history)``: one target per row, exactly MiniOneRec's SFT sample). "Timestamps" are the row's
ordinal over the files read in train → valid → test order: they order events, they are not time.
"""

from __future__ import annotations

import ast
import html
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from sgrec_ray import storage
from sgrec_ray.config import DataSection
from sgrec_ray.data.loaders import read_delimited
from sgrec_ray.data.validate import (
    BAD_LIST,
    MISSING_ITEM_ID,
    MISSING_USER_ID,
    UNKNOWN_ITEM,
    DataError,
    Rejects,
    Source,
    parse_id,
    require_columns,
    validate_items,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CSV_COLUMNS = [
    "user_id",
    "history_item_id",
    "item_id",
]  # the ones we need (others are kept in rejects)
EMPTY_HISTORY = "empty_history"
BAD_SID = "bad_sid"
DESCRIPTION_MAX_CHARS = 1000  # text encoders read ~256 tokens; the rest is mostly HTML/CSS residue
_SID_TOKEN = re.compile(r"<([a-z])_(\d+)>")


@dataclass
class SampleRow:
    """One validated CSV row: the history and target as item ids, and where it came from."""

    user_id: str
    history: list[str]
    target: str
    ordinal: int  # position over all rows read (train → valid → test): the row's "timestamp"


@dataclass
class MiniOneRecData:
    items: pa.Table  # item_id, title, description, brand, categories, sid (strings), file order
    items_uri: str
    rows: dict[str, list[SampleRow]]  # per split present on disk
    train_from: str  # "train", or "valid" when the train split is absent and config allows it
    sid_tokens: dict[str, list[str]] | None = None  # item_id -> SID tokens (index json)
    sid_uri: str | None = None
    notes: list[str] = field(default_factory=list)


def _single_file(folder: str, suffix: str, what: str) -> str | None:
    names = [n for n in storage.listdir(folder) if n.endswith(suffix)]
    if not names:
        return None
    if len(names) > 1:
        raise DataError(f"{folder}: expected one {what} file (*{suffix}), found {names}")
    return storage.join(folder, names[0])


def clean_text(raw: Any, max_chars: int | None = None) -> str | None:
    """Readable text from Amazon metadata: list literals joined, HTML/CSS removed, entities decoded.

    ``max_chars`` caps long descriptions (cut at a word boundary).
    """
    if raw is None:
        return None
    if isinstance(raw, list):
        raw = " ".join(str(x) for x in raw)
    text = str(raw).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, list):
            text = " ".join(str(x) for x in value)
    text = re.sub(r"<[^>]*>", " ", text)  # tags
    text = re.sub(r"[.#]?[\w-]+\s*\{[^{}]*\}", " ", text)  # CSS rules (".headerM {color:…}")
    text = re.sub(r"\s+", " ", html.unescape(text)).strip()
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0] + " …"
    return text or None


def parse_sid_tokens(tokens: Any) -> list[int] | None:
    """``["<a_60>", "<b_159>", "<c_203>"]`` → ``[60, 159, 203]``; None unless levels go a, b, c…"""
    if not isinstance(tokens, list) or not tokens:
        return None
    codes = []
    for level, token in enumerate(tokens):
        m = _SID_TOKEN.fullmatch(str(token).strip())
        if m is None or ord(m.group(1)) - ord("a") != level:
            return None
        codes.append(int(m.group(2)))
    return codes


def _read_catalogue(folder: str, rejects: Rejects) -> tuple[pa.Table, str]:
    info_uri = _single_file(storage.join(folder, "info"), ".txt", "item info")
    if info_uri is None:
        raise DataError(
            f"{folder}: no info/*.txt item catalogue (lines <sid>\\t<title>\\t<item_id>)"
        )
    sids, titles, ids = [], [], []
    for line in storage.read_text(info_uri).splitlines():
        if not line.strip():
            continue
        parts = line.split("\t")
        ok = len(parts) >= 3
        sids.append(parts[0] if ok else None)
        titles.append("\t".join(parts[1:-1]) if ok else None)
        ids.append(parts[-1] if ok else None)  # a malformed line has no id → rejected below
    raw = pa.table(
        {"sid": pa.array(sids, pa.string()), "title": pa.array(titles, pa.string()),
         "item_id": pa.array(ids, pa.string())}
    )  # fmt: skip
    items = validate_items(Source(raw, info_uri, {c: c for c in raw.column_names}), rejects)

    item_json = _single_file(storage.join(folder, "index"), ".item.json", "item metadata")
    meta: dict[str, dict] = storage.read_json(item_json) if item_json else {}
    ids = items.column("item_id").to_pylist()
    titles = [html.unescape(t) if t else None for t in items.column("title").to_pylist()]
    extra: dict[str, list] = {"description": [], "brand": [], "categories": []}
    for pos, item_id in enumerate(ids):
        m = meta.get(item_id) or {}
        extra["description"].append(clean_text(m.get("description"), DESCRIPTION_MAX_CHARS))
        extra["brand"].append(clean_text(m.get("brand")))
        cats = m.get("categories")
        extra["categories"].append(", ".join(cats) if isinstance(cats, list) else clean_text(cats))
        if titles[pos] is None and m.get("title"):
            titles[pos] = html.unescape(str(m["title"]))
    items = items.set_column(
        items.column_names.index("title"), "title", pa.array(titles, pa.string())
    )
    for name, values in extra.items():
        items = items.append_column(name, pa.array(values, pa.string()))
    return items, info_uri


def _literal_list(text: Any) -> list | None:
    if text is None:
        return None
    try:
        value = ast.literal_eval(str(text))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return list(value) if isinstance(value, list | tuple) else None


def _read_split(
    uri: str, known: set[str], rejects: Rejects, ordinal: int
) -> tuple[list[SampleRow], int]:
    """Validated rows of one split file, and the file's row count (for the next file's ordinals)."""
    table = read_delimited(uri, string_columns=CSV_COLUMNS)
    require_columns(table.column_names, CSV_COLUMNS, uri)
    users = table.column("user_id").to_pylist()
    hists = table.column("history_item_id").to_pylist()
    targets = table.column("item_id").to_pylist()
    records: list[dict] | None = None
    out = []
    for i in range(table.num_rows):
        reason, detail = None, ""
        user_id, target = parse_id(users[i]), parse_id(targets[i])
        raw_history = _literal_list(hists[i])
        history: list[str | None] = []
        if user_id is None:
            reason = MISSING_USER_ID
        elif target is None:
            reason = MISSING_ITEM_ID
        elif raw_history is None:
            reason, detail = BAD_LIST, f"history_item_id {hists[i]!r} is not a list literal"
        else:
            history = [parse_id(h) for h in raw_history]
            unknown = [h for h in [*history, target] if h not in known]
            if unknown:
                reason, detail = UNKNOWN_ITEM, f"items {unknown[:5]} not in the catalogue"
            elif not history:
                reason = EMPTY_HISTORY
        if reason is not None:  # one reason per row: the first check that fails
            if records is None:
                records = table.to_pylist()
            rejects.add(uri, i, reason, records[i], detail)
            continue
        # all checks passed: ids are set and every history id is a known (non-None) item
        assert user_id is not None and target is not None
        out.append(SampleRow(user_id, [h for h in history if h is not None], target, ordinal + i))
    return out, table.num_rows


# Where the files come from: MiniOneRec's public repository ships them under data/Amazon/.
SOURCE_HINT = (
    "the files come from MiniOneRec's public repository (https://github.com/AkaliKong/MiniOneRec, "
    "folder data/Amazon/: train/ valid/ test/ info/ index/, one file per category); copy one "
    "category's files (e.g. Office_Products_*) into the same layout and point data.path at it"
)


def load_minionerec(cfg: DataSection, rejects: Rejects) -> MiniOneRecData:
    """Read and validate the catalogue, the SID index and every split present in ``data.path``."""
    if not cfg.path:
        raise DataError(f"data.source=minionerec needs data.path; {SOURCE_HINT}")
    folder = storage.normalize(cfg.path)
    if not storage.exists(folder):
        raise DataError(f"data.path {folder} does not exist; {SOURCE_HINT}")
    items, items_uri = _read_catalogue(folder, rejects)
    known = set(items.column("item_id").to_pylist())

    files = {s: _single_file(storage.join(folder, s), ".csv", f"{s} split") for s in SPLITS}
    for s in ("valid", "test"):
        if files[s] is None:
            raise DataError(f"{folder}: no {s}/*.csv split found")
    notes = []
    train_from = "train"
    if files["train"] is None:
        if cfg.minionerec_train_from != "valid":
            raise DataError(
                f"{folder}: no train/*.csv split. Provide it, or set "
                "data.minionerec_train_from=valid to train on the valid split "
                "(not the paper's protocol)."
            )
        train_from = "valid"
        note = (
            "NO TRAIN SPLIT: training on the VALID split (data.minionerec_train_from=valid). "
            "This is NOT MiniOneRec's protocol; results are not comparable with the paper."
        )
        log.warning("!" * 20 + " " + note + " " + "!" * 20)
        notes.append(note)

    rows: dict[str, list[SampleRow]] = {}
    ordinal = 0
    for s in SPLITS:
        split_uri = files[s]
        if split_uri is not None:
            rows[s], n = _read_split(split_uri, known, rejects, ordinal)
            ordinal += n

    sid_uri = _single_file(storage.join(folder, "index"), ".index.json", "SID index")
    sid_tokens = storage.read_json(sid_uri) if sid_uri else None
    return MiniOneRecData(items, items_uri, rows, train_from, sid_tokens, sid_uri, notes)


def sid_codes_table(
    sid_tokens: dict[str, list[str]], index: dict[str, int], uri: str, rejects: Rejects
) -> tuple[pa.Table, int]:
    """(item_idx, codes) of the catalogue items with valid SID tokens, and how many items lack one.

    Entries that cannot be parsed are rejected (reason ``bad_sid``, row = position in the JSON);
    entries for items outside the (possibly max_users-sliced) catalogue are ignored.
    """
    codes: dict[int, list[int]] = {}
    for pos, (item_id, tokens) in enumerate(sid_tokens.items()):
        if item_id not in index:
            continue
        parsed = parse_sid_tokens(tokens)
        if parsed is None:
            rejects.add(uri, pos, BAD_SID, {item_id: tokens}, "expected ['<a_N>', '<b_N>', …]")
            continue
        codes[index[item_id]] = parsed
    idx = sorted(codes)
    table = pa.table(
        {
            "item_idx": pa.array(idx, pa.int32()),
            "codes": pa.array([codes[i] for i in idx], pa.list_(pa.int32())),
        }
    )
    return table, len(index) - len(idx)
