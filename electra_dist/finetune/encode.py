"""From a task's examples to model inputs and back: tokenization (pairs as `[CLS] A [SEP] B [SEP]`, words with
their tag on the first sub-token, QA windows), the Auto class of each kind, and model outputs decoded into
the label space the metrics read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from electra_dist.finetune import metrics, qa
from electra_dist.finetune.tasks import Split, Task

AUTO_CLASS = {
    "classification": "AutoModelForSequenceClassification",
    "regression": "AutoModelForSequenceClassification",
    "token": "AutoModelForTokenClassification",
    "qa": "AutoModelForQuestionAnswering",
}
# the metric a task kind is ranked by (seeds, the LR grid); GLUE passes each task's own
MAIN_METRIC = {"classification": "accuracy", "regression": "pearson", "token": "f1", "qa": "f1"}


@dataclass
class Encoded:
    rows: list[dict]  # model inputs (+ labels)
    words: list[list[int | None]] | None = None  # token: each row's word index per token
    windows: qa.Windows | None = None  # qa


def encode(task: Task, tokenizer, split: Split, max_len: int, stride: int = 128) -> Encoded:
    if task.kind == "qa":
        win = qa.windows(tokenizer, split, max_len, stride, labels=True)
        return Encoded(win.inputs, windows=win)
    if task.kind == "token":
        enc = tokenizer(split.texts, is_split_into_words=True, truncation=True, max_length=max_len)
        index = {t: i for i, t in enumerate(task.label_names)}
        rows, words = [], []
        for r, tags in enumerate(split.labels):
            ids = enc.word_ids(r)
            first = [w is not None and (k == 0 or ids[k - 1] != w) for k, w in enumerate(ids)]
            labels = [index[tags[w]] if f else -100 for w, f in zip(ids, first)]
            rows.append({k: enc[k][r] for k in enc.keys()} | {"labels": labels})
            words.append([w if f else None for w, f in zip(ids, first)])
        return Encoded(rows, words=words)
    enc = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_len)
    index = {t: i for i, t in enumerate(task.label_names)}
    labels = [float(y) if task.kind == "regression" else index[y] for y in split.labels]
    return Encoded([{k: enc[k][r] for k in enc.keys()} | {"labels": labels[r]} for r in range(len(split))])


def collator(kind: str, tokenizer):
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding, default_data_collator

    if kind == "qa":
        return default_data_collator  # the windows are padded to max_len already
    if kind == "token":
        return DataCollatorForTokenClassification(tokenizer)
    return DataCollatorWithPadding(tokenizer)


def decode(task: Task, split: Split, enc: Encoded, logits) -> list | dict:
    """Model outputs as labels: a label index each (classification), a number (regression), a tag list per
    sentence (words past the truncation get "O"), an answer text per question id (qa)."""
    if task.kind == "qa":
        start, end = logits
        return qa.decode(split, enc.windows, start, end, version_2=any(not a for a in split.labels))
    if task.kind == "regression":
        return np.asarray(logits).reshape(-1).tolist()
    pred = np.asarray(logits).argmax(-1)
    if task.kind == "classification":
        return pred.tolist()
    out = []
    for r, words in enumerate(enc.words):
        tags = ["O"] * len(split.texts[r])
        for k, w in enumerate(words):
            if w is not None:
                tags[w] = task.label_names[pred[r][k]]
        out.append(tags)
    return out


def score(task: Task, split: Split, pred) -> dict[str, float]:
    """The kind's metrics of predictions against the split's gold labels."""
    if task.kind == "qa":
        return metrics.squad(pred, {q: [a["text"] for a in golds] for q, golds in zip(split.ids, split.labels)})
    if task.kind == "token":
        return metrics.entities(pred, split.labels)
    if task.kind == "regression":
        return metrics.regression(pred, split.labels)
    index = {t: i for i, t in enumerate(task.label_names)}
    return metrics.classification(pred, [index[y] for y in split.labels], task.num_labels)


def baseline(task: Task, fit: Split, test: Split) -> tuple[str, dict[str, float]]:
    """The trivial predictor a score is read against, and its metrics on `test`: the majority class of the
    training rows, their mean, all-O, always-null."""
    if task.kind == "qa":
        return "always null", score(task, test, dict.fromkeys(test.ids, ""))
    if task.kind == "token":
        return "all O", score(task, test, [["O"] * len(w) for w in test.texts])
    if task.kind == "regression":
        return "mean prediction", score(task, test, [float(np.mean(fit.labels))] * len(test))
    majority = max(task.label_names, key=fit.labels.count)
    return f"majority class {majority!r}", score(task, test, [task.label_names.index(majority)] * len(test))
