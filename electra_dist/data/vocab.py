"""The tokenizer contract: the special-token ids ELECTRA's masking and model rely on, and the
interface every tokenizer offers (ours, SentencePiece, in tokenizer.py; a published model's
vocab.txt / tokenizer.json in hf_vocab.py). Nothing here depends on a tokenizer library."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable


@dataclass(frozen=True)
class SpecialIds:
    pad: int = 0
    unk: int = 1
    cls: int = 2
    sep: int = 3
    mask: int = 4

    @classmethod
    def from_json(cls, path: str | Path) -> SpecialIds:
        return cls(
            **{k: int(v) for k, v in json.loads(Path(path).read_text()).items() if k in cls.__dataclass_fields__}
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@runtime_checkable
class Tokenizer(Protocol):
    """What the shard builder, the loader's checks, fine-tuning and the export read from a tokenizer."""

    kind: str  # "sentencepiece" | "huggingface"
    directory: Path
    special: SpecialIds
    checksum: str  # SHA-256 of the files that define it: a resume on another tokenizer is refused

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def id_to_piece(self, i: int) -> str: ...
