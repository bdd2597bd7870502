"""SentencePiece tokenizer: training from raw text, and the loaded tokenizer with ELECTRA's specials.

A tokenizer directory holds `spm.model`, `spm.vocab` and `special_tokens.json` (the fixed ids of
[PAD] [UNK] [CLS] [SEP] [MASK], the vocab size and the model's SHA-256). [CLS] [SEP] [MASK] are
control symbols: text that spells "[MASK]" never becomes the mask id.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Iterable

from electra_dist.data.text import TextStats, cut_long, expand_inputs, iter_documents, split_sentences
from electra_dist.data.vocab import SpecialIds, Tokenizer
from electra_dist.io import sha256_file

MODEL = "spm.model"
VOCAB = "spm.vocab"
SPECIALS = "special_tokens.json"
# SentencePiece skips sentences over max_sentence_length BYTES; a UTF-8 character is at most 4
MAX_SENTENCE_BYTES = 16384
MAX_SENTENCE_CHARS = MAX_SENTENCE_BYTES // 4
SPECIAL_PIECES = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Ours (spm.model) or a published model's (vocab.txt / tokenizer.json, see hf_vocab): either
    implements the `data.vocab.Tokenizer` protocol."""
    from electra_dist.data.hf_vocab import HFTokenizer, is_hf_tokenizer_dir

    return HFTokenizer(directory) if is_hf_tokenizer_dir(directory) else SentencePieceTokenizer(directory)


def tokenizer_files(directory: str | Path) -> list[Path]:
    """The files that make the tokenizer in `directory` (a published model's directory also holds its
    weights: those are not the tokenizer's to copy or log)."""
    from electra_dist.data.hf_vocab import DEFINING, is_hf_tokenizer_dir

    names = DEFINING if is_hf_tokenizer_dir(directory) else (MODEL, VOCAB, SPECIALS)
    return [Path(directory) / n for n in names if (Path(directory) / n).is_file()]


class SentencePieceTokenizer:
    """A trained SentencePiece model plus the special-token ids the model and masking use."""

    kind = "sentencepiece"

    def __init__(self, directory: str | Path):
        import sentencepiece as spm

        self.directory = Path(directory)
        model = self.directory / MODEL
        if not model.is_file():
            raise FileNotFoundError(
                f"tokenizer directory {self.directory} has no {MODEL} "
                "(build one with `electra-dist tokenizer train`), nor a Hugging Face vocab.txt or "
                "tokenizer.json"
            )
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model))
        except (RuntimeError, OSError) as e:
            raise ValueError(
                f"{model}: not a SentencePiece model ({str(e).splitlines()[0][:120]}): retrain it with "
                "`electra-dist tokenizer train`"
            ) from None
        try:
            meta = json.loads((self.directory / SPECIALS).read_text()) if (self.directory / SPECIALS).is_file() else {}
        except ValueError as e:
            raise ValueError(f"{self.directory / SPECIALS}: not readable JSON ({e})") from None
        self.special = SpecialIds(**{k: self.sp.piece_to_id(p) for k, p in SPECIAL_PIECES.items()})
        self.checksum = sha256_file(model)
        if meta.get("sha256") and meta["sha256"] != self.checksum:
            raise ValueError(
                f"{self.directory / SPECIALS} was written for another {MODEL} "
                f"(sha256 {meta['sha256'][:12]}… ≠ {self.checksum[:12]}…): keep the two files of one "
                "`electra-dist tokenizer train` together, or train the tokenizer again"
            )

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))


def train_tokenizer(
    inputs: list[str],
    vocab_size: int,
    out: str | Path,
    model_type: str = "unigram",
    lowercase: bool = False,
    input_sentence_size: int = 2_000_000,
    character_coverage: float = 0.9999,
    text_field: str = "text",
    seed: int = 0,
    num_threads: int | None = None,
) -> tuple[Tokenizer, TextStats]:
    """Train SentencePiece on the sentences of `inputs`; sample `input_sentence_size` of them."""

    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"--model-type: {model_type!r} is not one of unigram, bpe")
    if vocab_size < 16:
        raise ValueError(f"--vocab-size: {vocab_size} is too small (need room for 5 special tokens)")
    files = expand_inputs(inputs)
    stats = TextStats()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    sample, seen = _sample_sentences(files, stats, text_field, input_sentence_size, seed)
    if not sample:
        raise ValueError(
            f"no text found in {', '.join(map(str, files))} ({stats.documents} documents, {stats.bad_lines} bad lines)"
        )

    model = _train_sentencepiece(sample, vocab_size, model_type, lowercase, character_coverage, num_threads)
    (out / MODEL).write_bytes(model)
    proc = spm.SentencePieceProcessor(model_proto=model)
    (out / VOCAB).write_text(
        "".join(f"{proc.id_to_piece(i)}\t{proc.get_score(i)}\n" for i in range(proc.get_piece_size())), encoding="utf-8"
    )
    specials = {k: proc.piece_to_id(p) for k, p in SPECIAL_PIECES.items()}
    meta = {
        **specials,
        "vocab_size": proc.get_piece_size(),
        "model_type": model_type,
        "lowercase": lowercase,
        "sha256": sha256_file(out / MODEL),
        "sentences_sampled": len(sample),
        "sentences_seen": seen,
        "inputs": [str(f) for f in files],
        **stats.to_dict(),
    }
    (out / SPECIALS).write_text(json.dumps(meta, indent=2))
    return SentencePieceTokenizer(out), stats


def _train_sentencepiece(
    sample: list[str],
    vocab_size: int,
    model_type: str,
    lowercase: bool,
    character_coverage: float,
    num_threads: int | None,
) -> bytes:
    """The serialized SentencePiece model of `sample`, with [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4."""
    import os

    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            pad_id=0,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            pad_piece="[PAD]",
            unk_piece="[UNK]",
            control_symbols=["[CLS]", "[SEP]", "[MASK]"],
            input_sentence_size=0,  # we already sampled
            shuffle_input_sentence=False,
            max_sentence_length=MAX_SENTENCE_BYTES,
            num_threads=num_threads or min(16, os.cpu_count() or 1),
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(
            f"SentencePiece could not train a {vocab_size}-piece vocabulary on {len(sample)} sentences: {e}"
        ) from None
    return model.getvalue()


def _sample_sentences(files: list, stats: TextStats, text_field: str, size: int, seed: int) -> tuple[list[str], int]:
    """A reservoir sample of `size` sentences (cut to what SentencePiece takes) and how many there were:
    a large corpus costs one read and bounded memory."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for doc in iter_documents(files, stats, text_field):
        for whole in split_sentences(doc):
            pieces = cut_long(whole, MAX_SENTENCE_CHARS)
            if len(pieces) > 1:
                stats.long_sentences += 1
                stats.note(
                    f"a sentence of {len(whole):,} characters (no sentence end) was cut into "
                    f"{len(pieces)} pieces of ≤ {MAX_SENTENCE_CHARS:,} for SentencePiece"
                )
            for s in pieces:
                seen += 1
                if len(sample) < size:
                    sample.append(s)
                else:
                    j = rng.randrange(seen)
                    if j < size:
                        sample[j] = s
    return sample, seen
