"""Shard building: documents → sentences → packed `[CLS] A [SEP] B [SEP]` → WebDataset tar shards.

Two packings. `official` follows the official ELECTRA pre-processing (`build_pretraining_dataset.py`,
`ExampleBuilder`): sentences accumulate until the target length; a document end flushes a
shorter example; 10 % of examples keep a single segment; 5 % get a random shorter target length.
`full` (the default) is the same builder with neither short targets nor document flushes —
sentences run on into the next document, as RoBERTa's FULL-SENTENCES — so EVERY sequence is
exactly seq_len tokens: no padding is ever computed, attention never needs a mask (the flash
kernel), and every batch has one shape. Measured on English web text (official packing): 8.2 %
of positions are padding at seq 512 (2.7 % at 128) and 99.5 % of 32-sequence batches hold a
padded row. Each sample is one file `ids.u16`
(or `ids.i32` for vocabularies over 65 536): the unpadded token ids, little-endian. Token-type
ids are implied (1 after the first [SEP]). `manifest.json` records shards, counts, seq len, the
tokenizer's checksum and the inputs. Output is identical for the same inputs and seed,
whatever the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from electra_dist.data.packing import ExampleBuilder, _init_worker, _pack_chunk  # noqa: F401  (ExampleBuilder: API)
from electra_dist.data.text import TextStats, expand_inputs, iter_documents
from electra_dist.data.tokenizer import load_tokenizer
from electra_dist.io import write_atomic

MANIFEST = "manifest.json"
FORMAT = "electra-dist-shards/1"
SHARD_NAME = "shard-{part:03d}-{index:06d}.tar"
EVAL_NAME = "eval-{part:03d}-{index:06d}.tar"
EVAL_MAX_SEQUENCES = 2000  # per part: evaluation reads a fixed few hundred of them


PACKINGS = ("full", "official")


# ---- main side ------------------------------------------------------------------------------


class _TarSet:
    """Numbered tar shards of one split, a new one every `per_shard` samples; `shards` for the manifest."""

    def __init__(self, out: Path, pattern: str, part: int, per_shard: int, ext: str):
        self.out, self.pattern, self.part, self.per_shard, self.ext = out, pattern, part, per_shard, ext
        self.shards: list[dict] = []
        self.writer = None

    def write(self, ids) -> None:
        import webdataset as wds

        if self.writer is None or self.shards[-1]["samples"] >= self.per_shard:
            self.close()
            name = self.pattern.format(part=self.part, index=len(self.shards))
            self.writer = wds.TarWriter(str(self.out / name), mtime=0.0)  # reproducible bytes
            self.shards.append({"name": name, "samples": 0, "tokens": 0})
        prefix = "e" if self.pattern == EVAL_NAME else ""
        self.writer.write(
            {
                "__key__": f"{prefix}{self.part:03d}-{len(self.shards) - 1:06d}-{self.shards[-1]['samples']:07d}",
                self.ext: ids.astype("<" + ids.dtype.str[1:]).tobytes(),
            }
        )
        self.shards[-1]["samples"] += 1
        self.shards[-1]["tokens"] += int(ids.size)

    @property
    def samples(self) -> int:
        return sum(s["samples"] for s in self.shards)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.shards[-1]["bytes"] = (self.out / self.shards[-1]["name"]).stat().st_size


@dataclass
class BuildResult:
    manifest: dict
    stats: TextStats
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.manifest["text_tokens"] / max(self.seconds, 1e-9)


def _chunks(
    files: list[Path], stats: TextStats, text_field: str, chunk_chars: int, part: int, num_parts: int
) -> Iterator[tuple[int, list[str]]]:
    """Documents grouped into chunks of ~chunk_chars; chunk i belongs to part i % num_parts."""
    index, docs, size = 0, [], 0
    for doc in iter_documents(files, stats, text_field):
        docs.append(doc)
        size += len(doc)
        if size >= chunk_chars:
            if index % num_parts == part:
                yield index, docs
            index, docs, size = index + 1, [], 0
    if docs and index % num_parts == part:
        yield index, docs


def build_shards(
    inputs: list[str],
    tokenizer_dir: str | Path,
    seq_len: int,
    out: str | Path,
    samples_per_shard: int = 10000,
    workers: int = 1,
    seed: int = 0,
    text_field: str = "text",
    chunk_chars: int = 1 << 20,
    part: int = 0,
    num_parts: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    packing: str = "full",
    eval_fraction: float = 0.01,
) -> BuildResult:
    """Tokenize and pack `inputs` into tar shards under `out`; `eval_fraction` of the documents of the
    first EVAL_CHUNKS chunks (at most EVAL_MAX_SEQUENCES sequences) go to the held-out eval split.

    With num_parts > 1 this builds only part `part` (a SLURM array task each) and writes
    `manifest.part-K.json`; `merge_manifests` joins the parts into `manifest.json`.
    """
    _check_build_args(seq_len, packing, part, num_parts, eval_fraction)
    files = expand_inputs(inputs)
    tok = load_tokenizer(tokenizer_dir)
    out = _clear_part(Path(out), part, num_parts, overwrite)

    stats = TextStats()
    start = time.perf_counter()
    ext = "ids.u16" if tok.vocab_size <= 65536 else "ids.i32"
    train_set = _TarSet(out, SHARD_NAME, part, samples_per_shard, ext)
    eval_set = _TarSet(out, EVAL_NAME, part, samples_per_shard, ext)
    jobs = (
        (i, docs, seq_len, seed, packing, eval_fraction)
        for i, docs in _chunks(files, stats, text_field, chunk_chars, part, num_parts)
    )
    pool = mp.get_context("fork").Pool(workers, _init_worker, (str(tokenizer_dir),)) if workers > 1 else None
    if pool is None:
        _init_worker(str(tokenizer_dir))
    results = pool.imap(_pack_chunk, jobs) if pool else map(_pack_chunk, jobs)
    try:
        text_tokens = _write_sets(results, train_set, eval_set, stats, f"shards → {out}", progress)
    finally:
        if pool:
            pool.close()
            pool.join()
    shards = train_set.shards
    seconds = time.perf_counter() - start
    if not shards and num_parts == 1:
        raise ValueError(
            f"no samples were produced from {', '.join(map(str, files))}: "
            f"{stats.documents} documents, {stats.empty_documents} empty, {stats.bad_lines} bad lines"
        )
    # fmt: off
    manifest = _manifest(seq_len, packing, ext, seed, tok, tokenizer_dir, files, shards, eval_set, eval_fraction,
                         text_tokens, stats, part, num_parts)
    # fmt: on
    name = MANIFEST if num_parts == 1 else f"manifest.part-{part:03d}.json"
    check_shard_files([str(out / s["name"]) for s in shards + eval_set.shards], manifest)  # what it lists, as listed
    _write_json(out / name, manifest)
    return BuildResult(manifest, stats, seconds)


def _write_sets(results, train_set: _TarSet, eval_set: _TarSet, stats: TextStats, desc: str, progress: bool) -> int:
    """The packed chunks into the training and the held-out shards, with a progress bar; the text's tokens."""
    from tqdm import tqdm

    text_tokens = 0
    bar = tqdm(unit="tok", unit_scale=True, desc=desc, disable=not progress, smoothing=0.1)
    try:
        for _, samples, n_tokens, n_long, held in results:
            text_tokens += n_tokens
            stats.long_sentences += n_long
            for ids in samples:
                train_set.write(ids)
            for ids in held[: max(0, EVAL_MAX_SEQUENCES - eval_set.samples)]:
                eval_set.write(ids)
            bar.update(n_tokens)
        train_set.close()
        eval_set.close()
    finally:
        bar.close()
    return text_tokens


def _clear_part(out: Path, part: int, num_parts: int, overwrite: bool) -> Path:
    """`out`, created, without this part's shards of an earlier build (refused unless `overwrite`)."""
    old = sorted([*out.glob(f"shard-{part:03d}-*.tar"), *out.glob(f"eval-{part:03d}-*.tar")]) if out.is_dir() else []
    if (old or (out / MANIFEST).exists()) and num_parts == 1 and not overwrite:
        raise FileExistsError(f"{out} already holds shards; pass --overwrite to replace them")
    for f in old:
        f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_build_args(seq_len: int, packing: str, part: int, num_parts: int, eval_fraction: float) -> None:
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"--eval-fraction: {eval_fraction} must lie in [0, 1)")
    if seq_len < 8:
        raise ValueError(f"--seq-len: {seq_len} is too short (need at least 8)")
    if packing not in PACKINGS:
        raise ValueError(f"--packing: {packing!r} is not one of {list(PACKINGS)}")
    if not 0 <= part < num_parts:
        raise ValueError(f"--part: {part} must lie in [0, --num-parts={num_parts})")


def _manifest(
    seq_len,
    packing,
    ext,
    seed,
    tok,
    tokenizer_dir,
    files,
    shards,
    eval_set,
    eval_fraction,
    text_tokens,
    stats,
    part,
    num_parts,
) -> dict:
    return {
        "format": FORMAT,
        "seq_len": seq_len,
        "packing": packing,
        "dtype": ext.split(".")[1],
        "seed": seed,
        "tokenizer": {
            "sha256": tok.checksum,
            "vocab_size": tok.vocab_size,
            "special": tok.special.to_dict(),
            "kind": tok.kind,
            "path": str(Path(tokenizer_dir).resolve()),
        },
        "inputs": [{"path": str(f), "bytes": f.stat().st_size} for f in files],
        "shards": shards,
        "samples": sum(s["samples"] for s in shards),
        "eval_shards": eval_set.shards,
        "eval_samples": eval_set.samples,
        "eval_fraction": eval_fraction,
        "tokens": sum(s["tokens"] for s in shards),
        "text_tokens": text_tokens,
        "text": stats.to_dict(),
        "part": part,
        "num_parts": num_parts,
    }


def merge_manifests(out: str | Path) -> dict:
    """Join `manifest.part-*.json` of an array build into one `manifest.json`."""
    out = Path(out)
    parts = sorted(out.glob("manifest.part-*.json"))
    if not parts:
        raise FileNotFoundError(f"no manifest.part-*.json in {out}")
    loaded = [json.loads(p.read_text()) for p in parts]
    n = loaded[0]["num_parts"]
    found = sorted(m["part"] for m in loaded)
    if found != list(range(n)):
        raise ValueError(f"{out}: parts {sorted(set(range(n)) - set(found))} of {n} are missing")
    first = loaded[0]
    for m in loaded[1:]:
        for key in ("seq_len", "packing", "dtype", "seed", "tokenizer"):
            if m.get(key) != first.get(key):
                raise ValueError(f"{out}: part {m['part']} differs from part {first['part']} in {key}")
    merged = {
        **first,
        "shards": [s for m in loaded for s in m["shards"]],
        "part": None,
        "eval_shards": [s for m in loaded for s in m.get("eval_shards", [])],
    }
    if not merged["shards"]:
        raise ValueError(f"{out}: no part produced any samples")
    for key in ("samples", "tokens", "text_tokens", "eval_samples"):
        merged[key] = sum(m.get(key, 0) for m in loaded)
    merged["text"] = {k: sum(m["text"][k] for m in loaded) for k in first["text"]}
    merged["text"]["files"] = first["text"]["files"]
    _write_json(out / MANIFEST, merged)
    return merged


def _write_json(path: Path, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=2))


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {MANIFEST} (build shards with `electra-dist shards build`)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:  # 0 bytes, torn, not JSON
        raise ValueError(
            f"{path}: not a readable manifest ({e}; {path.stat().st_size} bytes): rebuild the shards "
            "with `electra-dist shards build`"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(
            f"{path}: format {manifest.get('format') if isinstance(manifest, dict) else manifest!r} is not {FORMAT!r}"
        )
    # a manifest names files beside it, nothing else: never a `pipe:` command, a URL or another path
    bad = [
        s.get("name")
        for s in manifest.get("shards", []) + manifest.get("eval_shards", [])
        if not isinstance(s.get("name"), str) or not re.fullmatch(r"[\w.-]+\.tar", s["name"])
    ]
    if bad:
        raise ValueError(
            f"{path}: shard names must be plain .tar file names in that directory; refusing "
            f"{', '.join(map(repr, bad[:3]))} (`pipe:` commands are accepted only from data.shards "
            f"as you type it, never from a file)"
        )
    return manifest


def check_shard_files(urls: list[str], manifest: dict | None = None) -> None:
    """Every local shard exists, has the size its manifest lists, and starts with a tar header (a file
    zero-filled, truncated to nothing or of another kind is named here, not found mid-run)."""
    import tarfile

    sizes = {
        s["name"]: s.get("bytes") for s in (manifest or {}).get("shards", []) + (manifest or {}).get("eval_shards", [])
    }
    problems = []
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            continue
        path = Path(url)
        if not path.is_file():
            problems.append(f"{path}: listed but missing")
            continue
        size, want = path.stat().st_size, sizes.get(path.name)
        if want is not None and size != want:
            problems.append(f"{path}: {size} bytes where the manifest lists {want}")
            continue
        with open(path, "rb") as f:
            head = f.read(512)
        try:
            tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            problems.append(
                f"{path}: not a tar shard ({e or 'empty header'}: zero-filled, truncated or another kind of file)"
            )
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError("; ".join(problems[:5]) + more + ": rebuild the shards (`electra-dist shards build`)")


def check_compatible(
    manifest: dict, tokenizer, seq_len: int, where: str = "shards", max_positions: int | None = None
) -> None:
    """Raise one error naming every mismatch between shards, tokenizer and config."""
    problems = []
    if tokenizer is not None and manifest["tokenizer"]["sha256"] != tokenizer.checksum:
        problems.append(
            f"{where} were built with tokenizer sha256 {manifest['tokenizer']['sha256'][:12]}… "
            f"({manifest['tokenizer'].get('path', '?')}), but data.tokenizer={tokenizer.directory} has "
            f"{tokenizer.checksum[:12]}…: rebuild the shards or point data.tokenizer at the tokenizer they used"
        )
    recorded = manifest["tokenizer"].get("special")
    if tokenizer is not None and recorded and recorded != tokenizer.special.to_dict():
        problems.append(
            f"{where} were built with special-token ids {recorded}, but data.tokenizer={tokenizer.directory} "
            f"has {tokenizer.special.to_dict()}: masking would hide the wrong tokens; rebuild the shards"
        )
    if manifest["seq_len"] > seq_len:
        also = (
            f" model.max_position_embeddings={manifest['seq_len']}"
            if max_positions is not None and max_positions < manifest["seq_len"]
            else ""
        )
        problems.append(
            f"{where} hold sequences of up to {manifest['seq_len']} tokens but train.seq_len={seq_len}: "
            f"set train.seq_len={manifest['seq_len']}{also} or rebuild the shards with --seq-len {seq_len}"
        )
    elif manifest["seq_len"] < seq_len:
        problems.append(
            f"{where} were packed to {manifest['seq_len']} tokens but train.seq_len={seq_len}: "
            f"set train.seq_len={manifest['seq_len']} (padding every sequence would waste compute)"
        )
    if problems:
        raise ValueError("\n".join(problems))
