"""Labeled data of the four task kinds, read from the formats users have, checked with errors that name the file,
the line and the field.

    classification   JSONL: a text field (and a second text for pairs) and a label field, any labels
    regression       the same with a number as the label (STS-B): one output, mean squared error
    token            CoNLL columns (`token … tag`, a blank line between sentences) or JSONL `tokens`/`tags`
    qa               SQuAD v1.1 / v2.0 JSON (v2.0: questions marked is_impossible have no answer)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("classification", "regression", "token", "qa")


@dataclass
class Split:
    """One file's examples. texts: a string each (classification, regression), a word list (token), the context
    (qa); pairs: the second text (pairs), the question (qa); labels: a label name, a number, a tag list, or
    the gold answers ([{"text", "answer_start"}], empty: unanswerable)."""

    texts: list
    labels: list
    pairs: list | None = None
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows) -> Split:
        pick = [int(i) for i in rows]
        return Split(
            [self.texts[i] for i in pick],
            [self.labels[i] for i in pick],
            [self.pairs[i] for i in pick] if self.pairs is not None else None,
            [self.ids[i] for i in pick] if self.ids else [],
        )


@dataclass
class Task:
    name: str
    kind: str
    train: Split
    test: Split
    label_names: list[str] = field(default_factory=list)  # classification labels, token tags

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.label_names)


def load_task(
    train: str | Path,
    test: str | Path,
    kind: str = "auto",
    text_field: str = "text",
    label_field: str = "label",
    pair_field: str | None = None,
    name: str | None = None,
) -> Task:
    """The task of a training and a test file, of `kind` (auto: by format and labels: SQuAD JSON → qa, CoNLL
    or JSONL with tokens/tags → token, numeric labels that are not all integers → regression)."""
    if kind not in (*KINDS, "auto"):
        raise ValueError(f"--task: {kind!r} is not one of auto, {', '.join(KINDS)}")
    kind = detect_kind(train, label_field) if kind == "auto" else kind
    read = {"qa": read_squad, "token": read_tagged}.get(kind)
    if read is not None:
        tr, te = read(train), read(test)
    else:
        tr, te = (read_labeled(p, text_field, label_field, pair_field, kind == "regression") for p in (train, test))
    names: list[str] = []
    if kind in ("classification", "token"):
        seen = [x for y in tr.labels for x in ([y] if kind == "classification" else y)]
        names = sorted(set(seen))
        test_seen = {x for y in te.labels for x in ([y] if kind == "classification" else y)}
        if unknown := sorted(test_seen - set(names)):
            raise ValueError(f"{test}: labels {unknown} do not occur in {train}")
    return Task(name or Path(train).stem, kind, tr, te, names)


def detect_kind(path: str | Path, label_field: str = "label") -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    head = path.read_text(encoding="utf-8")[:4096].lstrip()
    if head.startswith("{") and '"data"' in head and '"paragraphs"' in head:
        return "qa"
    if not head.startswith("{"):
        return "token"  # CoNLL columns
    rows = [obj for _, obj in _jsonl(path)]
    if "tokens" in rows[0] and "tags" in rows[0]:
        return "token"
    labels = [obj.get(label_field) for obj in rows]
    numbers = all(isinstance(y, (int, float)) and not isinstance(y, bool) for y in labels)
    return "regression" if numbers and any(not float(y).is_integer() for y in labels) else "classification"


def _jsonl(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from None


def read_labeled(path, text_field: str, label_field: str, pair_field: str | None, numeric: bool = False) -> Split:
    """A JSONL classification (or, `numeric`, regression) file."""
    texts, pairs, labels = [], [], []
    fields = [text_field, label_field] + ([pair_field] if pair_field else [])
    for n, obj in _jsonl(path):
        if missing := [f for f in fields if f not in obj]:
            raise ValueError(
                f"{path}:{n}: has no field {', '.join(map(repr, missing))} (it has {sorted(obj)}): set "
                "--text-field / --label-field / --text-pair-field to its field names"
            )
        texts.append(str(obj[text_field]))
        if pair_field:
            pairs.append(str(obj[pair_field]))
        try:
            labels.append(float(obj[label_field]) if numeric else str(obj[label_field]))
        except (TypeError, ValueError):
            raise ValueError(f"{path}:{n}: {label_field} {obj[label_field]!r} is not a number (regression)") from None
    if not texts:
        raise ValueError(f"{path}: no examples")
    return Split(texts, labels, pairs if pair_field else None)


def read_tagged(path: str | Path) -> Split:
    """Token classification: CoNLL columns (the first the token, the last its tag; -DOCSTART- lines and blank
    lines between sentences) or JSONL with `tokens` and `tags` lists of the same length."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = Path(path).read_text(encoding="utf-8")
    words, tags = [], []
    if text.lstrip().startswith("{"):
        for n, obj in _jsonl(path):
            if len(obj.get("tokens", [])) != len(obj.get("tags", [None])):
                raise ValueError(f"{path}:{n}: needs `tokens` and `tags` lists of the same length")
            words.append([str(w) for w in obj["tokens"]])
            tags.append([str(t) for t in obj["tags"]])
    else:
        sent: list[tuple[str, str]] = []
        for n, line in enumerate([*text.splitlines(), ""], 1):
            cols = line.split()
            if not cols or cols[0] == "-DOCSTART-":
                if sent:
                    words.append([w for w, _ in sent])
                    tags.append([t for _, t in sent])
                sent = []
                continue
            if len(cols) < 2:
                raise ValueError(f"{path}:{n}: {line!r} is not `token … tag` (CoNLL columns)")
            sent.append((cols[0], cols[-1]))
    if not words:
        raise ValueError(f"{path}: no sentences")
    return Split(words, tags)


def read_squad(path: str | Path) -> Split:
    """SQuAD JSON (v1.1 or v2.0): one example per question, with its context, id and gold answers."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}: not SQuAD JSON (a top-level `data` list of articles): {e}") from None
    contexts, questions, answers, ids = [], [], [], []
    for article in data:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                golds = [] if qa.get("is_impossible") else qa["answers"]
                for a in golds:
                    if para["context"][a["answer_start"] :].startswith(a["text"]) is False:
                        raise ValueError(
                            f"{path}: question {qa['id']}: answer {a['text']!r} is not at its answer_start"
                        )
                contexts.append(para["context"])
                questions.append(qa["question"])
                answers.append([{"text": a["text"], "answer_start": a["answer_start"]} for a in golds])
                ids.append(str(qa["id"]))
    if not ids:
        raise ValueError(f"{path}: no questions")
    return Split(contexts, answers, questions, ids)
