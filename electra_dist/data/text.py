"""Raw text in: documents from .txt / .jsonl (and their .gz), split into sentences.

Plain text: documents are separated by blank lines. JSON lines: one document per line, its
text under `text_field`. Bytes that are not UTF-8 are replaced and counted, never fatal.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) before whitespace
# and an upper-case letter, digit or opening quote; newlines inside a document also end one.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])|\n+")


@dataclass
class TextStats:
    """What reading the inputs found; reported by the CLI and stored in the shard manifest."""

    files: int = 0
    documents: int = 0
    empty_documents: int = 0
    bad_lines: int = 0  # JSON lines that did not parse or had no text field
    replaced_bytes: int = 0  # undecodable bytes replaced by U+FFFD
    long_sentences: int = 0  # "sentences" too long for one piece (no punctuation/newlines), cut into pieces
    truncated_files: int = 0  # gzip files cut short or damaged: what was read before is kept
    problems: list[str] = field(default_factory=list)  # first few, with file and line

    def note(self, problem: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(problem)

    def merge(self, other: TextStats) -> None:
        for k in self.to_dict():
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for p in other.problems:
            self.note(p)

    def to_dict(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "files",
                "documents",
                "empty_documents",
                "bad_lines",
                "replaced_bytes",
                "long_sentences",
                "truncated_files",
            )
        }


def expand_inputs(patterns: Iterable[str]) -> list[Path]:
    """Expand globs and directories; every pattern must match at least one file."""
    files: list[Path] = []
    missing = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found = sorted(x for x in p.rglob("*") if x.is_file() and _is_text(x))
        elif any(c in pattern for c in "*?["):
            found = sorted(Path(x) for x in glob.glob(pattern, recursive=True) if os.path.isfile(x))
        else:
            found = [p] if p.is_file() else []
        if not found:
            missing.append(pattern)
        files.extend(found)
    if missing:
        raise FileNotFoundError(f"no input file matches: {', '.join(missing)}")
    if not files:
        raise FileNotFoundError("no input files given")
    return files


def _is_text(p: Path) -> bool:
    name = p.name.removesuffix(".gz")
    return name.endswith((".txt", ".jsonl", ".json", ".text"))


_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def check_encoding(path: Path, head: bytes) -> None:
    """UTF-16/32 (with a byte-order mark, or NUL-heavy without one) is refused by name: decoded as
    UTF-8 it would become a tokenizer of NULs and replacement characters."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            raise ValueError(
                f"{path}: this file is {name} (it starts with a {name} byte-order mark); convert it to "
                f"UTF-8 first, e.g. iconv -f {name} -t UTF-8 {path} > {path.stem}.utf8{path.suffix}"
            )
    nul = head.count(0)
    if len(head) >= 64 and nul > len(head) // 10:
        raise ValueError(
            f"{path}: {100 * nul // len(head)} % of its first {len(head)} bytes are NUL: UTF-16/32 "
            "without a byte-order mark, or not text at all; convert it to UTF-8 (iconv)"
        )


def _open_lines(path: Path, stats: TextStats) -> Iterator[tuple[int, str]]:
    import zlib

    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    lineno = 0
    with raw:
        reader = io.BufferedReader(raw)
        try:
            check_encoding(path, reader.peek(4096)[:4096])
            for lineno, line in enumerate(reader, 1):
                try:
                    yield lineno, line.decode("utf-8")
                except UnicodeDecodeError:
                    text = line.decode("utf-8", errors="replace")
                    n = text.count("\ufffd")
                    stats.replaced_bytes += n
                    stats.note(f"{path}:{lineno}: {n} byte(s) not UTF-8, replaced")
                    yield lineno, text
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a copy cut short, a damaged block
            stats.truncated_files += 1
            stats.note(
                f"{path}: damaged or truncated gzip after line {lineno} ({e}); the {lineno} line(s) read "
                "before are kept"
            )


def read_documents(path: Path, stats: TextStats, text_field: str = "text") -> Iterator[str]:
    """Documents of one file (stripped, never empty); empty ones are counted and skipped."""
    stats.files += 1
    is_json = path.name.removesuffix(".gz").endswith((".jsonl", ".json"))
    if is_json:
        for lineno, line in _open_lines(path, stats):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = obj[text_field] if isinstance(obj, dict) else None
            except (json.JSONDecodeError, KeyError):
                text = None
            if not isinstance(text, str):
                stats.bad_lines += 1
                stats.note(f"{path}:{lineno}: not a JSON object with a string {text_field!r} field")
                continue
            yield from _count(text.strip(), stats)
        return
    buf: list[str] = []
    for _, line in _open_lines(path, stats):
        if line.strip():
            buf.append(line.rstrip("\n"))
        elif buf:
            yield from _count("\n".join(buf).strip(), stats)
            buf = []
    if buf:
        yield from _count("\n".join(buf).strip(), stats)


def _count(doc: str, stats: TextStats) -> Iterator[str]:
    if doc:
        stats.documents += 1
        yield doc
    else:
        stats.empty_documents += 1


def iter_documents(paths: Iterable[Path], stats: TextStats, text_field: str = "text") -> Iterator[str]:
    for path in paths:
        yield from read_documents(Path(path), stats, text_field)


def split_sentences(doc: str) -> list[str]:
    """Sentences of a document: a light rule-based splitter (punctuation + capital, or newline)."""
    return [s for s in (part.strip() for part in _SENTENCE_END.split(doc)) if s]


def cut_long(sentence: str, max_chars: int) -> list[str]:
    """`sentence` as pieces of at most `max_chars` characters, cut at whitespace where there is any
    (a 10 MB line without sentence ends is still text worth learning from)."""
    if len(sentence) <= max_chars:
        return [sentence]
    pieces, start = [], 0
    while start < len(sentence):
        end = min(start + max_chars, len(sentence))
        if end < len(sentence):
            space = sentence.rfind(" ", start + max_chars // 2, end)
            end = space if space > start else end
        piece = sentence[start:end].strip()
        if piece:
            pieces.append(piece)
        start = end
    return pieces
