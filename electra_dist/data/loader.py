"""Streaming loader over WebDataset shards: split by data-parallel rank and worker, seeded
shuffling, masking on CPU workers, fixed-shape collation, endless epochs, exact resume.

Every (DP rank, worker) pair is one "consumer". Per epoch the shard list is permuted with
(seed, epoch) and dealt out to consumers (or, with fewer shards than consumers, samples are
dealt out by index), so one epoch sees every sample exactly once. Each consumer's stream is a
pure function of (seed, consumer): its batch i is always the same. torch's DataLoader returns
worker batches round-robin, so the state of the whole loader is ONE number, the batches
consumed; resuming fast-forwards each worker through batches it already delivered without
decoding or masking them.
Masking randomness is a function of (seed, epoch, sample key) alone (electra_dist.rng).
TP ranks of one DP group pass the same dp_rank and so get identical batches.
"""

from __future__ import annotations

import glob
import io
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from electra_dist import procs, rng
from electra_dist.data.batch import Batch
from electra_dist.data.masking import mask_tokens, max_predictions
from electra_dist.data.shards import MANIFEST, read_manifest
from electra_dist.data.vocab import SpecialIds


class CorruptShardError(RuntimeError):
    pass


_DTYPES = {"ids.u16": "<u2", "ids.i32": "<i4"}


def resolve_shards(spec: str) -> tuple[list[str], dict | None]:
    """Shard URLs and the manifest (if any) for a directory, glob, brace list or URL(s)."""
    import webdataset as wds

    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            manifest = read_manifest(path)
            return [str(path / s["name"]) for s in manifest["shards"]], manifest
        urls = sorted(u for u in glob.glob(str(path / "*.tar")) if not Path(u).name.startswith("eval-"))
        if not urls:
            raise FileNotFoundError(f"shard directory {spec} holds no {MANIFEST} and no *.tar")
        return urls, None
    urls: list[str] = []
    for url in wds.shardlists.expand_urls(spec):
        if "://" in url or url.startswith("pipe:"):
            urls.append(url)
        elif any(c in url for c in "*?["):
            urls.extend(sorted(glob.glob(url)))
        else:
            urls.append(url)
    local_missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
    if local_missing or not urls:
        raise FileNotFoundError(f"data.shards={spec!r}: no such shard(s): {', '.join(local_missing[:5]) or spec}")
    parent = Path(urls[0]).parent
    manifest = read_manifest(parent) if "://" not in urls[0] and (parent / MANIFEST).is_file() else None
    return urls, manifest


class _CountingReader(io.RawIOBase):
    """Wraps a stream to know the byte offset when a tar turns out corrupt."""

    def __init__(self, stream):
        self.stream, self.offset = stream, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.stream.read(len(b))
        n = len(data)
        b[:n] = data
        self.offset += n
        return n

    def close(self) -> None:
        self.stream.close()
        super().close()


def iter_shard(url: str, on_corrupt: str = "error", expected: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(key, token ids) of one shard. A truncated/corrupt tar raises naming shard and offset,
    or (on_corrupt="skip") ends the shard with a warning. `expected`: the manifest's sample count;
    a shard that ends early without a tar error (zero-filled, cut at a member boundary) is just as
    corrupt."""
    import webdataset as wds
    from webdataset.tariterators import base_plus_ext, tar_file_iterator

    stream = _CountingReader(wds.gopen(url))
    n = 0
    try:
        # one member per sample, so no grouping by key is needed
        for member in tar_file_iterator(io.BufferedReader(stream, 1 << 16)):
            key, ext = base_plus_ext(member["fname"])
            if ext not in _DTYPES:
                raise CorruptShardError(f"member {member['fname']} is not ids.u16/ids.i32")
            n += 1
            yield key, np.frombuffer(member["data"], dtype=_DTYPES[ext])
    except Exception as e:  # tarfile.ReadError, EOFError, OSError from a pipe, ...
        msg = f"corrupt shard {url}: after {n} good samples, near byte {stream.offset}: {type(e).__name__}: {e}"
        if on_corrupt == "skip":
            print(f"electra-dist: warning: {msg} (skipping the rest of it)", file=sys.stderr)
            return
        raise CorruptShardError(msg) from e
    finally:
        stream.close()
    if expected is not None and n != expected:
        msg = (
            f"corrupt shard {url}: it holds {n} samples but the manifest says {expected} (zero-filled or "
            f"cut short? rebuild it, or set data.on_corrupt=skip to go on without the rest)"
        )
        if on_corrupt != "skip":
            raise CorruptShardError(msg)
        print(f"electra-dist: warning: {msg}", file=sys.stderr)


@dataclass
class LoaderSettings:
    seq_len: int
    micro_batch_size: int
    special: SpecialIds
    mask_prob: float
    mask_fraction: float = 0.85
    random_fraction: float = 0.0
    vocab_size: int | None = None
    seed: int = 0
    shuffle_buffer: int = 1000
    on_corrupt: str = "error"


class ShardStream(IterableDataset):
    """Endless stream of masked, collated batches for one DP rank (split again by worker)."""

    def __init__(
        self,
        urls: list[str],
        settings: LoaderSettings,
        dp_rank: int = 0,
        dp_size: int = 1,
        skip_batches: int = 0,
        expected: dict[str, int] | None = None,
        keep_rows: list[int] | None = None,
    ):
        self.urls, self.s, self.expected = list(urls), settings, expected or {}
        self.keep_rows = keep_rows  # collate only these rows of each batch (the rest are other ranks')
        self.dp_rank, self.dp_size, self.skip_batches = dp_rank, dp_size, skip_batches

    # ---- per-consumer sample order -------------------------------------------------------
    def samples(self, consumer: int, consumers: int) -> Iterator[tuple[int, str, np.ndarray]]:
        """(epoch, key, ids) forever: this consumer's share of each epoch, buffer-shuffled."""
        s = self.s
        epoch = 0
        while True:
            order = list(range(len(self.urls)))
            random.Random(s.seed * 1_000_003 + epoch).shuffle(order)
            if len(order) >= consumers:
                mine, stride = order[consumer::consumers], None
            else:
                mine, stride = order, consumers
            rng = random.Random((s.seed * 1_000_003 + epoch) * 1_000_003 + consumer)
            buffer: list[tuple[str, np.ndarray]] = []
            index = 0
            for shard in mine:
                url = self.urls[shard]
                for item in iter_shard(url, s.on_corrupt, self.expected.get(url)):
                    index += 1
                    if stride is not None and (index - 1) % stride != consumer:
                        continue
                    if len(buffer) < max(1, s.shuffle_buffer):
                        buffer.append(item)
                        continue
                    j = rng.randrange(len(buffer))
                    out, buffer[j] = buffer[j], item
                    yield epoch, out[0], out[1]
            rng.shuffle(buffer)
            for key, ids in buffer:
                yield epoch, key, ids
            if not index:
                raise CorruptShardError(
                    f"consumer {consumer}/{consumers} got no samples in epoch {epoch} from "
                    f"{len(mine)} shard(s): {', '.join(self.urls[i] for i in mine[:5])}"
                )
            epoch += 1

    def batches(self, consumer: int, consumers: int) -> Iterator[tuple[int, list]]:
        """(batch index, [(epoch, key, ids)] × micro_batch_size) forever."""
        batch: list = []
        i = 0
        for item in self.samples(consumer, consumers):
            batch.append(item)
            if len(batch) == self.s.micro_batch_size:
                yield i, batch
                batch, i = [], i + 1

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        w, W = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader takes batches from its workers round-robin starting at worker 0, so after
        # n delivered batches, loader worker w must continue the stream of logical worker
        # (n + w) % W, which had already delivered ceil((n - that) / W) batches.
        n = self.skip_batches
        logical = (n + w) % W
        consumer, consumers = self.dp_rank * W + logical, self.dp_size * W
        skip = (n - logical + W - 1) // W if n > logical else 0
        for i, batch in self.batches(consumer, consumers):
            if i < skip:
                continue
            yield self.collate(batch if self.keep_rows is None else [batch[r] for r in self.keep_rows])

    # ---- collation and masking -----------------------------------------------------------
    def collate(self, batch: list[tuple[int, str, np.ndarray]]) -> Batch:
        s = self.s
        B, S = len(batch), s.seq_len
        ids = np.full((B, S), s.special.pad, dtype=np.int64)
        for r, (_, key, row) in enumerate(batch):
            if row.size > S:
                raise ValueError(
                    f"sample {key} has {row.size} tokens > train.seq_len={S}: "
                    "the shards were built for a longer sequence length"
                )
            ids[r, : row.size] = row
        ids_t = torch.from_numpy(ids)
        # masking (and, in the model, Gumbel sampling) is a function of the sample id alone
        sample_ids = torch.tensor([rng.sample_id(key, epoch, s.seed) for epoch, key, _ in batch], dtype=torch.long)
        m = mask_tokens(
            ids_t, s.special, s.mask_prob, s.mask_fraction, s.random_fraction, s.vocab_size, sample_ids=sample_ids
        )
        is_sep = ids_t == s.special.sep
        token_type = ((is_sep.long().cumsum(1) - is_sep.long()) > 0).long()  # 1 after the first [SEP]
        return Batch.of(  # `padded` known here, on the CPU: the model never asks the device
            m,
            sample_ids,
            max_predictions(S, s.mask_prob),
            token_type,
            keys=[key for _, key, _ in batch],
            epoch=batch[0][0],
        )


class PretrainLoader:
    """Iterable of batches with `state_dict()`/`load_state_dict()` for exact resume.

    dp_split="batch" (the default): the data stream is one of GLOBAL batches (global_batch_size rows,
    one per optimizer step); every rank reads it and collates only its own rows — micro-batch a of
    DP rank r is slice k = a × dp + r. The data order, each slice's content and each slice's dropout
    seed (`dropout_seed`, from (seed, step, k)) are then the same for any DP size and accumulation
    with the same micro batch, so a run resumes on another number of GPUs with the same curve. The
    cost: every rank reads every sample's bytes (2 bytes a token), not its share.
    dp_split="shards": each DP rank streams its own share of the shards (the data order depends on
    the DP size; resume needs the same one).
    """

    def __init__(
        self,
        shards: str | list[str],
        settings: LoaderSettings,
        dp_rank: int = 0,
        dp_size: int = 1,
        num_workers: int = 2,
        prefetch_factor: int = 4,
        dp_split: str = "batch",
        pin_memory: bool = False,
        grad_accum: int = 1,
    ):
        self.expected: dict[str, int] = {}  # url → the manifest's sample count
        if isinstance(shards, str):
            self.urls, manifest = resolve_shards(shards)
            if manifest is not None and Path(shards).is_dir():
                self.expected = {url: s["samples"] for url, s in zip(self.urls, manifest["shards"])}
        else:
            self.urls = list(shards)
        self.settings, self.dp_rank, self.dp_size, self.grad_accum = settings, dp_rank, dp_size, grad_accum
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        if dp_split not in ("shards", "batch"):
            raise ValueError(f"data.dp_split: {dp_split!r} is not 'shards' or 'batch'")
        self.dp_split = dp_split
        self.pin_memory = pin_memory  # page-locked batches: their copy to the GPU overlaps compute
        self.consumed = 0  # batches handed to the caller

    def held_out(self, urls: list[str], samples: int) -> tuple[int, list[Batch]]:
        """The first `samples` sequences of the held-out shards `urls`, in order, as micro-batches of this
        DP rank (sequence i goes to rank i mod DP), masked as training masks them (a function of the
        sample, so every evaluation sees the same corruption); and how many sequences there are in all."""
        rows: list[tuple[int, str, Any]] = []
        for url in urls:
            for key, ids in iter_shard(url):
                rows.append((0, key, ids))
                if len(rows) >= samples:
                    break
            if len(rows) >= samples:
                break
        if not rows:
            raise ValueError(f"the eval shards ({', '.join(urls[:3])}) hold no samples")
        mine, B = rows[self.dp_rank :: self.dp_size], self.settings.micro_batch_size
        stream = ShardStream(urls, self.settings)
        return len(rows), [stream.collate(mine[i : i + B]) for i in range(0, len(mine), B)]

    @property
    def global_batch_size(self) -> int:
        return self.settings.micro_batch_size * self.dp_size * self.grad_accum

    def __iter__(self) -> Iterator[Batch]:
        if self.dp_split == "batch":
            yield from self._slices_of_global_batches()
            return
        yield from self._stream(self.settings, self.consumed, None)

    def _stream(self, settings: LoaderSettings, skip: int, keep_rows: list[int] | None) -> Iterator[Batch]:
        stream = ShardStream(
            self.urls,
            settings,
            0 if keep_rows else self.dp_rank,
            1 if keep_rows else self.dp_size,
            skip_batches=skip,
            expected=self.expected,
            keep_rows=keep_rows,
        )
        if self.num_workers == 0:
            source: Any = iter(stream)
        else:
            procs.quiet_handover_errors()  # a worker killed mid-handover: one line, no traceback
            # own generator: making workers must not draw from the global RNG; this process stops them
            source = DataLoader(
                stream,
                batch_size=None,
                num_workers=self.num_workers,
                prefetch_factor=self.prefetch_factor,
                persistent_workers=False,
                multiprocessing_context="fork",
                pin_memory=self.pin_memory,
                generator=torch.Generator().manual_seed(self.settings.seed),
                worker_init_fn=procs.ignore_stop_signals,
            )
        if keep_rows is not None:
            yield from source
            return
        for batch in source:
            self.consumed += 1
            yield batch

    def _slices_of_global_batches(self) -> Iterator[Batch]:
        import dataclasses

        B, dp, A = self.settings.micro_batch_size, self.dp_size, self.grad_accum
        if self.consumed % A:
            raise ValueError(f"the loader stands {self.consumed} micro-batches in, not at an optimizer step")
        slices = [a * dp + self.dp_rank for a in range(A)]
        rows = [k * B + i for k in slices for i in range(B)]
        wide = dataclasses.replace(self.settings, micro_batch_size=B * dp * A)
        step = self.consumed // A
        for batch in self._stream(wide, step, rows):
            for a, k in enumerate(slices):
                self.consumed += 1
                yield batch.rows(slice(a * B, (a + 1) * B), dropout_seed=rng.dropout_seed(self.settings.seed, step, k))
            step += 1

    def rewind(self, batches: int) -> None:
        self.consumed -= batches  # fetched, not trained on: handed out again after the resume

    def state_dict(self) -> dict[str, Any]:
        state = {
            "consumed_batches": self.consumed,
            "dp_split": self.dp_split,
            "num_workers": self.num_workers,
            "seed": self.settings.seed,
            "num_shards": len(self.urls),
            "dp_rank": self.dp_rank,
        }
        if self.dp_split == "batch":  # the position is in global batches: any DP size and accumulation
            return {
                **state,
                "global_batches": self.consumed // self.grad_accum,
                "global_batch_size": self.global_batch_size,
                "micro_batch_size": self.settings.micro_batch_size,
            }
        return {**state, "dp_size": self.dp_size, "micro_batch_size": self.settings.micro_batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mismatched = [
            f"{k}: checkpoint {state.get(k)!r} ≠ now {v!r}"
            for k, v in self.state_dict().items()
            if k not in ("consumed_batches", "global_batches", "dp_rank", "micro_batch_size")
            and k in state
            and state.get(k) != v
        ]
        if self.dp_split == "shards" and state.get("micro_batch_size") != self.settings.micro_batch_size:
            mismatched.append(
                f"micro_batch_size: checkpoint {state.get('micro_batch_size')!r} ≠ now "
                f"{self.settings.micro_batch_size!r}"
            )
        if mismatched:
            raise ValueError(
                "cannot resume the data stream exactly; the loader differs from the checkpoint's:\n  "
                + "\n  ".join(mismatched)
                + "\n(keep data.num_workers, train.global_batch_size, the seed and the shards as they "
                "were; with data.dp_split=shards also the data-parallel size and the micro batch)"
            )
        if "global_batches" in state:
            self.consumed = int(state["global_batches"]) * self.grad_accum
        else:
            self.consumed = int(state["consumed_batches"])
