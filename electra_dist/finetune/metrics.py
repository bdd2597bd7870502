"""Each task kind's official metrics, from well-kept libraries (scikit-learn, scipy, seqeval); SQuAD's as its
official evaluation script (v2.0) defines them. Every function returns plain floats keyed by metric name;
`score` is the one number a task is ranked by (GLUE's per-task average where a task has two)."""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

import numpy as np


def classification(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> dict[str, float]:
    """accuracy, macro-F1, Matthews correlation (CoLA's metric) and, for two labels, F1 of label 1 (MRPC/QQP's)."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    pred, gold = np.asarray(pred), np.asarray(gold)
    m = {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=list(range(num_labels)), average="macro", zero_division=0.0)),
        "mcc": float(matthews_corrcoef(gold, pred)) if len(set(gold.tolist()) | set(pred.tolist())) > 1 else 0.0,
    }
    if num_labels == 2:
        m["f1"] = float(f1_score(gold, pred, pos_label=1, average="binary", zero_division=0.0))
    return m


def regression(pred: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation (STS-B's metrics) and the mean squared error."""
    from scipy.stats import pearsonr, spearmanr

    pred, gold = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    flat = np.ptp(pred) == 0 or np.ptp(gold) == 0  # a constant has no correlation
    return {
        "pearson": 0.0 if flat else float(pearsonr(pred, gold)[0]),
        "spearman": 0.0 if flat else float(spearmanr(pred, gold)[0]),
        "mse": float(np.mean((pred - gold) ** 2)),
    }


def entities(pred: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 as seqeval computes them (conlleval's rules: an entity counts
    when its type and both boundaries match), and the token accuracy."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    return {
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
        "f1": float(f1_score(gold, pred, zero_division=0)),
        "accuracy": float(accuracy_score(gold, pred)),
    }


# ---- SQuAD: the official evaluation script's normalization, exact match and F1 (v2.0, which v1.1's equals
# on answerable questions)


def normalize_answer(s: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def exact(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:  # the null answer: F1 is 1 if both are empty, else 0
        return float(p == g)
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: dict[str, str], answers: dict[str, list[str]]) -> dict[str, float]:
    """exact and f1 (percent, as the official script prints them) over every question, each the best over its
    gold answers (an unanswerable question's only gold answer is ""), and v2.0's HasAns_/NoAns_ split."""
    em = {q: max(exact(predictions.get(q, ""), a) for a in golds or [""]) for q, golds in answers.items()}
    f1 = {q: max(token_f1(predictions.get(q, ""), a) for a in golds or [""]) for q, golds in answers.items()}
    out = {"exact": 100.0 * np.mean(list(em.values())), "f1": 100.0 * np.mean(list(f1.values())), "total": len(em)}
    for name, ids in (
        ("HasAns", [q for q in answers if answers[q]]),
        ("NoAns", [q for q in answers if not answers[q]]),
    ):
        if ids:
            out[f"{name}_exact"] = 100.0 * float(np.mean([em[q] for q in ids]))
            out[f"{name}_f1"] = 100.0 * float(np.mean([f1[q] for q in ids]))
            out[f"{name}_total"] = len(ids)
    return {k: float(v) for k, v in out.items()}
