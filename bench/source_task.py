"""A second labeled set from a JSONL corpus: which source is this sentence from?

    python bench/source_task.py --corpus ../shared/data/english-mixed.jsonl.gz --out /tmp/source-id \
        --sources brown janeausten mobydick sotu --train 500 --test 125

Writes OUT/source-id.train.jsonl and OUT/source-id.test.jsonl ({"text", "label"}), balanced over the
sources, deterministic (seeded); train and test sentences come from different documents (split by
document, as the shards' held-out split is), so no test sentence's neighbours were trained on. Used by
`electra-dist experiment` as a task that is about style and context, beside rotten-tomatoes'
sentiment. The sentences are in the pre-training corpus; their labels are not.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

from electra_dist.data.text import split_sentences


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="JSONL(.gz) with `text` and `source`")
    p.add_argument("--out", required=True)
    p.add_argument("--sources", nargs="+", default=["brown", "janeausten", "mobydick", "sotu"])
    p.add_argument("--train", type=int, default=500, help="sentences per source in the train file")
    p.add_argument("--test", type=int, default=125, help="sentences per source in the test file")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    docs: dict[str, list[list[str]]] = {s: [] for s in a.sources}
    with gzip.open(a.corpus, "rt") if a.corpus.endswith(".gz") else open(a.corpus) as f:
        for line in f:
            d = json.loads(line)
            if d.get("source") in docs:
                docs[d["source"]].append([s for s in split_sentences(d["text"]) if 40 <= len(s) <= 300])
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for source, ds in docs.items():
        rng.shuffle(ds)
        split = {"test": [], "train": []}
        for doc in ds:  # whole documents go to test until it has enough, then to train
            part = "test" if len(split["test"]) < 4 * a.test else "train"
            split[part] += doc
        for part, n in (("train", a.train), ("test", a.test)):
            if len(split[part]) < n:
                raise SystemExit(f"source {source!r}: only {len(split[part])} {part} sentences, {n} asked")
            rows[part] += [{"text": s, "label": source} for s in rng.sample(split[part], n)]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for part, rs in rows.items():
        rng.shuffle(rs)
        (out / f"source-id.{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
        print(f"{out / f'source-id.{part}.jsonl'}: {len(rs)} sentences")


if __name__ == "__main__":
    main()
