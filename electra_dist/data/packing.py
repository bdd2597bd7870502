"""Packing, the worker side of `shards build`: token-id sentences → `[CLS] A [SEP] B [SEP]` examples.

`ExampleBuilder` is the official ELECTRA example builder (see electra_dist.data.shards for the two
packings); `_pack_chunk` packs one chunk of documents in a worker process, with its own RNG, and
sets the held-out documents of the eval split apart (packed by a builder of their own).
"""

from __future__ import annotations

import hashlib
import random

import numpy as np

from electra_dist.data.text import split_sentences
from electra_dist.data.tokenizer import load_tokenizer

LONG_SENTENCE_TOKENS = 4096  # no sentence runs this long: a document without sentence ends, reported
EVAL_CHUNKS = 64  # the eval split is drawn from the first 64 chunks (64 MiB of text by default) only


class ExampleBuilder:
    """The official ELECTRA example builder, fed token-id sentences; a document end flushes.
    `full=True`: no short targets, no flush at document ends: every example is max_length long."""

    def __init__(self, cls_id: int, sep_id: int, max_length: int, rng: random.Random, full: bool = False):
        self.cls, self.sep, self.max_length, self.rng, self.full = cls_id, sep_id, max_length, rng, full
        self.sentences: list[list[int]] = []
        self.length = 0
        self.target_length = max_length

    def add_sentence(self, ids: list[int]) -> list[int] | None:
        if not ids:
            return None
        self.sentences.append(ids)
        self.length += len(ids)
        return self._create() if self.length >= self.target_length else None

    def end_document(self) -> list[int] | None:
        return self._create() if self.length and not self.full else None

    def _create(self) -> list[int]:
        rng = self.rng
        # small chance to have only one segment, as in classification tasks
        first_target = 100000 if rng.random() < 0.1 else (self.target_length - 3) // 2
        first: list[int] = []
        second: list[int] = []
        for sentence in self.sentences:
            # to the first segment if it is empty, if the sentence fits, or 50 % of the time
            # when it overflows (while the second segment is still empty)
            if (
                not first
                or len(first) + len(sentence) < first_target
                or (not second and len(first) < first_target and rng.random() < 0.5)
            ):
                first += sentence
            else:
                second += sentence
        leftover: list[int] = []
        if self.full:  # fill to the brim; what does not fit starts the next example instead of being cut
            room = self.max_length - 3 - min(len(first), self.max_length - 3)
            if second and room > 0:
                first, second, leftover = first[: self.max_length - 3], second[:room], second[room:]
            else:  # one segment after all
                both = first + second
                first, second, leftover = both[: self.max_length - 2], [], both[self.max_length - 2 :]
        else:
            first = first[: self.max_length - 2]
            second = second[: max(0, self.max_length - len(first) - 3)]
        self.sentences, self.length = ([leftover], len(leftover)) if leftover else ([], 0)
        self.target_length = self.max_length
        if not self.full and rng.random() < 0.05:
            self.target_length = rng.randint(5, self.max_length)
        ids = [self.cls] + first + [self.sep]
        if second:
            ids += second + [self.sep]
        return ids


# ---- worker side --------------------------------------------------------------------------

_TOKENIZER = None  # this worker's tokenizer (ours or a published model's)


def _init_worker(tokenizer_dir: str) -> None:
    global _TOKENIZER
    _TOKENIZER = load_tokenizer(tokenizer_dir)


def held_out(seed: int, chunk: int, position: int, fraction: float) -> bool:
    """Whether document `position` of chunk `chunk` belongs to the eval split: a pure function of
    (seed, chunk, position), so the split is the same whatever the number of workers or parts."""
    if fraction <= 0 or chunk >= EVAL_CHUNKS:
        return False
    digest = hashlib.blake2b(f"eval/{seed}/{chunk}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def _pack_chunk(job: tuple) -> tuple[int, list[np.ndarray], int, int, list[np.ndarray]]:
    """Pack one chunk of documents; its RNG depends only on (seed, chunk index). With full packing
    the chunk's last, partial example is dropped (about one in 500 at seq 512). A sentence longer
    than one example (a line without sentence ends) is cut into example-sized pieces first, so
    none of it is dropped. Returns (index, examples, text tokens, sentences past LONG_SENTENCE_TOKENS,
    eval examples): held-out documents are packed by a builder of their own."""
    index, docs, seq_len, seed, packing, eval_fraction = job
    tok = _TOKENIZER
    assert tok is not None
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.int32
    builders = [
        ExampleBuilder(
            tok.special.cls,
            tok.special.sep,
            seq_len,
            random.Random(seed * 1_000_003 + index + k),
            full=packing == "full",
        )
        for k in (0, 7_777_777)
    ]
    outs: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    tokens = long = 0
    piece = seq_len - 3
    for position, doc in enumerate(docs):
        split = int(held_out(seed, index, position, eval_fraction))
        builder, out = builders[split], outs[split]
        for ids in tok.encode_batch(split_sentences(doc)):
            tokens += len(ids)
            long += len(ids) > LONG_SENTENCE_TOKENS
            for start in range(0, max(1, len(ids)), piece):
                ex = builder.add_sentence(ids[start : start + piece])
                if ex is not None:
                    out.append(np.asarray(ex, dtype=dtype))
        ex = builder.end_document()
        if ex is not None:
            out.append(np.asarray(ex, dtype=dtype))
    return index, outs[0], tokens, long, outs[1]
