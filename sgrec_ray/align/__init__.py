"""Aligning the judge LLM (PSJ Stage A) on point-wise labels.

The paper does not use its aspect scorer zero-shot: it trains it on labelled (user, item) examples.

- labels: the schema and its validation (:mod:`labels`), weak labels from ratings for data without
  a teacher (:mod:`weak_labels`), and the draft → review sheet → import round trip for
  teacher-drafted, person-checked labels (:mod:`annotate`);
- training: labels as token-level examples in the judge's own prompt format (:mod:`examples`),
  the reward / sampling / metric math (:mod:`objectives`), LoRA SFT and GRPO on Ray Train
  (:mod:`train`);
- the ``align`` stage (:mod:`stage`): train, then evaluate base / +SFT / +SFT+GRPO
  (:mod:`evaluate`), reported as ``judge_alignment`` (:mod:`report`).
"""
