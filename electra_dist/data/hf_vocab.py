"""A published model's own tokenizer (a Hugging Face directory: WordPiece `vocab.txt` or `tokenizer.json`)
with the interface of our SentencePiece `Tokenizer`, so shards, masking, training, export and fine-tuning
use the model's vocabulary and ITS special-token ids (in BERT vocabularies [PAD] 0, [UNK] 100, [CLS] 101,
[SEP] 102, [MASK] 103 — not our 0-4).

`tokenizer.json` is read as is (the fast tokenizer transformers would build); a bare `vocab.txt` becomes
BERT's WordPiece with `tokenizer_config.json`'s casing and accent settings. Special tokens are named by
`special_tokens_map.json` / `tokenizer_config.json` (default BERT's [PAD] [UNK] [CLS] [SEP] [MASK]); a name
missing from the vocabulary is an error naming the directory and the token. Text is encoded WITHOUT special
tokens (packing adds [CLS]/[SEP]), with no truncation, and text that spells "[MASK]" is text, never the
mask id (as our SentencePiece control symbols).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from electra_dist.data.vocab import SpecialIds

TOKENIZER_JSON = "tokenizer.json"
VOCAB_TXT = "vocab.txt"
# the files that define the tokenizer: their bytes make its checksum
DEFINING = (TOKENIZER_JSON, VOCAB_TXT, "tokenizer_config.json", "special_tokens_map.json")
_DEFAULT_NAMES = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def is_hf_tokenizer_dir(directory: str | Path) -> bool:
    d = Path(directory)
    return not (d / "spm.model").is_file() and any((d / f).is_file() for f in (TOKENIZER_JSON, VOCAB_TXT))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


class HFTokenizer:
    kind = "huggingface"

    def __init__(self, directory: str | Path):
        try:
            from tokenizers import Tokenizer as RustTokenizer
            from tokenizers.implementations import BertWordPieceTokenizer
        except ImportError:
            raise ImportError(
                f"{directory} is a Hugging Face tokenizer: reading it needs the `tokenizers` package "
                "(pip install tokenizers, or transformers which brings it)"
            ) from None
        self.directory = d = Path(directory)
        conf = _read_json(d / "tokenizer_config.json")
        if (d / TOKENIZER_JSON).is_file():
            self.tk = RustTokenizer.from_file(str(d / TOKENIZER_JSON))
        elif (d / VOCAB_TXT).is_file():
            self.tk = BertWordPieceTokenizer(
                str(d / VOCAB_TXT),
                lowercase=conf.get("do_lower_case", True),
                strip_accents=conf.get("strip_accents"),
                handle_chinese_chars=conf.get("tokenize_chinese_chars", True),
            )._tokenizer
        else:
            raise FileNotFoundError(
                f"tokenizer directory {d} has neither {TOKENIZER_JSON} nor {VOCAB_TXT} (nor our spm.model)"
            )
        self.tk.no_truncation()
        self.tk.no_padding()
        if hasattr(self.tk, "encode_special_tokens"):  # text spelling "[MASK]" is text, as in our SentencePiece
            self.tk.encode_special_tokens = True
        names = dict(_DEFAULT_NAMES)
        for source in (conf, _read_json(d / "special_tokens_map.json")):
            for k in names:
                v = source.get(f"{k}_token")
                if v:
                    names[k] = v["content"] if isinstance(v, dict) else v
        ids = {k: self.tk.token_to_id(name) for k, name in names.items()}
        if missing := [f"{k} token {names[k]!r}" for k, i in ids.items() if i is None]:
            raise ValueError(
                f"tokenizer {d}: the vocabulary has no {', no '.join(missing)}; ELECTRA needs [PAD], "
                "[UNK], [CLS], [SEP] and [MASK] (name them in special_tokens_map.json)"
            )
        self.special = SpecialIds(**ids)
        h = hashlib.sha256()
        for name in DEFINING:
            if (d / name).is_file():
                h.update(name.encode() + b"\0" + (d / name).read_bytes())
        self.checksum = h.hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.tk.id_to_token(int(i))
