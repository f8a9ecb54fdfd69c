"""Aligning the judge LLM (PSJ Stage A) on point-wise labels.

The paper does not use its aspect scorer zero-shot: it trains it on labelled (user, item) examples.
This sub-package holds the parts that labels go through before any training: the label schema and
its validation (:mod:`labels`), weak labels from ratings for data without a teacher
(:mod:`weak_labels`), and the draft → review sheet → import round trip for teacher-drafted,
person-checked labels (:mod:`annotate`).
"""
