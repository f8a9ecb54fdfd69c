"""Labels → token-level training examples in exactly the judge's prompt format.

An example is the judge stage's prompt for (user, item) — the user's history strictly before the
label's time, the candidate, the answer scaffold — and the label's target level at each score
slot. The scaffold keeps its neutral placeholder digits as *input*, as at scoring time: the slot of
aspect k is read with the placeholder written at the slots before it, so training with the target
digits there would teach a context the scorer never sees (and, with correlated aspects, to copy the
previous digit). A label's rationale lines ("Profile: <sentence>") become extra sequences in the
judge's evidence format ("…Why Profile 4: <sentence>"), with the loss on the sentence only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from sgrec_ray.align.annotate import UserEvents
from sgrec_ray.align.objectives import target_levels
from sgrec_ray.judge import prompts
from sgrec_ray.judge.rows import JudgePrompts, JudgeRequest


@dataclass
class Example:
    """One labelled prompt. ``slots`` index ``ids``; ``levels`` are 1..scale per aspect."""

    ids: list[int]
    slots: list[int]
    levels: list[int]
    # Rationale sequences: (token ids, index of the first answer token); loss on the tail.
    rationale: list[tuple[list[int], int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "ids": self.ids,
            "slots": self.slots,
            "levels": self.levels,
            "rationale": self.rationale,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Example:
        return cls(
            d["ids"], d["slots"], d["levels"], [(list(i), int(s)) for i, s in d["rationale"]]
        )


def label_requests(labels: pa.Table, events: UserEvents, history: int) -> list[JudgeRequest]:
    """The judge request of each label: the user's last ``history`` items strictly before the
    label's time (all of them, minus the item itself, for a label without a timestamp)."""
    out = []
    for row in labels.select(["user_id", "item_idx", "timestamp"]).to_pylist():
        items = events.before(row["user_id"], row["timestamp"], history + 1)
        if row["timestamp"] is None:
            items = [i for i in items if i != row["item_idx"]]
        out.append(
            JudgeRequest(row["user_id"], items[-history:], int(row["item_idx"]), row["timestamp"])
        )
    return out


def rationale_lines(text: str | None, aspects: list[str]) -> dict[str, str]:
    """``"Profile: <sentence>\\nFuture: …"`` (``annotate.rationale_text``'s format) → {aspect: sentence}.

    A rationale that names no aspect is attached to the first aspect: a reviewer's free-text reason
    is still a reason.
    """
    if not text:
        return {}
    by_label = {prompts.ASPECTS[a][0].lower(): a for a in aspects}
    out: dict[str, str] = {}
    loose: list[str] = []
    for line in text.splitlines():
        head, sep, rest = line.partition(":")
        aspect = by_label.get(head.strip().lower()) if sep else None
        if aspect and rest.strip():
            out[aspect] = rest.strip()
        elif line.strip():
            loose.append(line.strip())
    if loose and aspects[0] not in out:
        out[aspects[0]] = " ".join(loose)
    return out


def encode_examples(
    labels: pa.Table, judge_prompts: JudgePrompts, events: UserEvents
) -> list[Example]:
    """One :class:`Example` per label row (``label_schema`` table), in table order."""
    spec, builder = judge_prompts.spec, judge_prompts.builder
    aspects = list(spec.aspects)
    requests = label_requests(labels, events, spec.long_history + spec.recent_history)
    rationales = labels.column("rationale").to_pylist()
    scores = [labels.column(a).to_pylist() for a in aspects]
    examples = []
    for k, req in enumerate(requests):
        user = judge_prompts.encode_user(req)
        cand = builder.encode_candidate(req.item_idx)
        levels = target_levels([s[k] for s in scores], spec.scale)
        extra = []
        for aspect, sentence in rationale_lines(rationales[k], aspects).items():
            head = builder.answer_ids(
                user,
                req.item_idx,
                prompts.evidence_prompt(spec, dict(zip(aspects, levels, strict=True)), aspect),
            )
            tail = builder.tok(" " + sentence, add_special_tokens=False)["input_ids"]
            extra.append((head + list(tail), len(head)))
        examples.append(
            Example(user.ids + cand.ids, [len(user.ids) + s for s in cand.slots], levels, extra)
        )
    return examples
