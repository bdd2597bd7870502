"""Extractive question answering as SQuAD is run: a long context is cut into windows of `max_len` tokens that
overlap by `stride` (question first, then the context; only the context is cut), each window labeled with the
answer's first and last token (or [CLS] where the answer is not inside it, and for an unanswerable question);
predictions are decoded over all windows of a question from the n best start and end logits, through the
tokenizer's character offsets back to the context's text, with the null answer ([CLS]) for SQuAD v2.0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from electra_dist.finetune.tasks import Split


@dataclass
class Windows:
    """The model inputs of every window, and for decoding: each window's question (row of the Split) and the
    character offsets of its context tokens (None for question and special tokens)."""

    inputs: list[dict]
    example: list[int]
    offsets: list[list[tuple[int, int] | None]]


def windows(tokenizer, split: Split, max_len: int, stride: int, labels: bool) -> Windows:
    """Every question's windows. A question is cut to a quarter of `max_len` tokens (SQuAD's max_query_length:
    64 of 384), and `stride` to what a window leaves of its context."""
    max_query = max(8, max_len // 4)
    questions = []
    for q, offsets in zip(
        split.pairs, tokenizer(split.pairs, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    ):
        questions.append(q[: offsets[max_query - 1][1]] if len(offsets) > max_query else q)
    enc = tokenizer(
        questions,
        split.texts,
        truncation="only_second",
        max_length=max_len,
        stride=min(stride, max_len - max_query - 4),
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    out = Windows([], [], [])
    for i, ex in enumerate(enc["overflow_to_sample_mapping"]):
        seq = enc.sequence_ids(i)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], seq)]
        row = {k: enc[k][i] for k in keys}
        if labels:
            row["start_positions"], row["end_positions"] = _answer_tokens(split.labels[ex], offsets)
        out.inputs.append(row)
        out.example.append(ex)
        out.offsets.append(offsets)
    return out


def _answer_tokens(answers: list[dict], offsets: list) -> tuple[int, int]:
    """(first, last) token of the first gold answer in this window; (0, 0), [CLS], where it is not inside."""
    if not answers:
        return 0, 0
    start = answers[0]["answer_start"]
    end = start + len(answers[0]["text"])
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > start or offsets[inside[-1]][1] < end:
        return 0, 0
    first = next(i for i in inside if offsets[i][1] > start)
    last = next(i for i in reversed(inside) if offsets[i][0] < end)
    return first, last


def decode(
    split: Split,
    win: Windows,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    version_2: bool,
    n_best: int = 20,
    max_answer_tokens: int = 30,
) -> dict[str, str]:
    """Each question's answer text: the best-scoring span (start logit + end logit) of its context over all its
    windows; with `version_2` the null answer "" when the null score ([CLS]'s start + end, the lowest over its
    windows) beats it."""
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for w, ex in enumerate(win.example):
        s, e, offsets = start_logits[w], end_logits[w], win.offsets[w]
        null[ex] = min(null.get(ex, np.inf), float(s[0] + e[0]))
        starts = np.argsort(s)[::-1][:n_best]
        ends = np.argsort(e)[::-1][:n_best]
        for i in starts:
            for j in ends:
                if offsets[i] is None or offsets[j] is None or j < i or j - i + 1 > max_answer_tokens:
                    continue
                score = float(s[i] + e[j])
                if ex not in best or score > best[ex][0]:
                    best[ex] = (score, split.texts[ex][offsets[i][0] : offsets[j][1]])
    out = {}
    for ex, qid in enumerate(split.ids):
        score, text = best.get(ex, (-np.inf, ""))
        out[qid] = "" if version_2 and null.get(ex, -np.inf) > score else text.strip()
    return out
