"""Data path on real text: SentencePiece tokenizer, shard builder, streaming loader, bad input."""

import gzip
import http.server
import json
import shutil
import tarfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from electra_dist.data.loader import (
    CorruptShardError,
    LoaderSettings,
    PretrainLoader,
    ShardStream,
    iter_shard,
    resolve_shards,
)
from electra_dist.data.shards import ExampleBuilder, build_shards, check_compatible, merge_manifests, read_manifest
from electra_dist.data.text import TextStats, iter_documents, split_sentences
from electra_dist.data.tokenizer import SentencePieceTokenizer, train_tokenizer
from electra_dist.data.vocab import SpecialIds

from conftest import SAMPLE, SEQ

ROOT = Path(__file__).resolve().parents[1]


def _settings(**kw):
    base = dict(seq_len=SEQ, micro_batch_size=8, special=SpecialIds(), mask_prob=0.15, seed=3, shuffle_buffer=64)
    base.update(kw)
    return LoaderSettings(**base)


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _same(a, b):
    return (
        all(
            torch.equal(getattr(x, k), getattr(y, k))
            for x, y in zip(a, b)
            for k in ("input_ids", "original_ids", "masked_positions", "attention_mask", "token_type_ids")
        )
        and [x.keys for x in a] == [y.keys for y in b]
        and len(a) == len(b)
    )


# ---- text -----------------------------------------------------------------------------------


def test_documents_and_bad_bytes(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_bytes(b"First doc line one.\nLine two.\n\n\n\nSecond \xff\xfe doc.\n\n   \n")
    jl = tmp_path / "b.jsonl.gz"
    with gzip.open(jl, "wt") as f:
        f.write(json.dumps({"text": "Json doc. Another sentence!"}) + "\n")
        f.write(json.dumps({"text": "   "}) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"body": "no text field"}) + "\n")
    stats = TextStats()
    docs = list(iter_documents([txt, jl], stats))
    assert docs == ["First doc line one.\nLine two.", "Second \ufffd\ufffd doc.", "Json doc. Another sentence!"]
    assert stats.replaced_bytes == 2 and stats.empty_documents == 1 and stats.bad_lines == 2
    assert any("a.txt:6" in p for p in stats.problems)
    assert any("b.jsonl.gz:3" in p for p in stats.problems)


def test_sentence_split():
    assert split_sentences('He said "Stop." Then he left! Was it 3 p.m.? Yes.\nNew line') == [
        'He said "Stop."',
        "Then he left!",
        "Was it 3 p.m.?",
        "Yes.",
        "New line",
    ]


# ---- tokenizer --------------------------------------------------------------------------------


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_tokenizer_specials_and_real_text(tok_dir, real_documents):
    tok = SentencePieceTokenizer(tok_dir)
    assert tok.vocab_size == 2000
    assert tok.special == SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    meta = json.loads((tok_dir / "special_tokens.json").read_text())
    assert meta["sha256"] == tok.checksum and meta["lowercase"] is True
    # control symbols: the text "[MASK]" never becomes the mask id; lower-casing applies
    ids = tok.encode("Call me Ishmael. [MASK] [CLS]")
    assert not set(ids) & {0, 2, 3, 4}
    assert tok.encode("CALL ME ISHMAEL") == tok.encode("call me ishmael")
    # real text is mostly known pieces
    ids = [i for d in real_documents[:5] for i in tok.encode(d[:2000])]
    assert sum(i == tok.special.unk for i in ids) / len(ids) < 0.01
    assert tok.decode(tok.encode("it is a truth universally acknowledged")) == "it is a truth universally acknowledged"


def test_tokenizer_bpe_and_sampling(tmp_path):
    tok, _ = train_tokenizer([str(SAMPLE)], 1000, tmp_path, model_type="bpe", input_sentence_size=3000)
    meta = json.loads((tmp_path / "special_tokens.json").read_text())
    assert meta["model_type"] == "bpe" and meta["sentences_sampled"] == 3000 and meta["sentences_seen"] > 10000
    assert tok.special.mask == 4 and tok.vocab_size == 1000
    assert tok.encode("Moby") != tok.encode("moby")  # no case folding by default


def test_tokenizer_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_tokenizer([str(tmp_path / "nope.txt")], 1000, tmp_path / "t")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ValueError, match="no text found"):
        train_tokenizer([str(empty)], 1000, tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="spm.model"):
        SentencePieceTokenizer(tmp_path)


# ---- shards -----------------------------------------------------------------------------------


def test_example_builder_follows_the_official_packing():
    import random

    b = ExampleBuilder(2, 3, 32, random.Random(0))
    out = []
    for doc in range(300):
        for s in range(6):
            ex = b.add_sentence([10 + doc % 50] * (3 + s))
            if ex:
                out.append(ex)
        if (ex := b.end_document()) is not None:
            out.append(ex)
    assert all(e[0] == 2 and e[-1] == 3 and len(e) <= 32 for e in out)
    seps = Counter(e.count(3) for e in out)
    assert set(seps) <= {1, 2}
    single = seps[1] / len(out)
    assert 0.05 < single < 0.3  # ~10 % single-segment by design, plus document tails


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_shards_format_manifest_and_token_types(shard_dir, tok_dir):
    m = read_manifest(shard_dir)
    tok = SentencePieceTokenizer(tok_dir)
    assert m["seq_len"] == SEQ and m["dtype"] == "u16" and m["tokenizer"]["sha256"] == tok.checksum
    assert len(m["shards"]) > 4 and m["samples"] == sum(s["samples"] for s in m["shards"])
    total, lengths = 0, []
    for s in m["shards"]:
        with tarfile.open(shard_dir / s["name"]) as t:
            names = t.getnames()
        assert len(names) == s["samples"] and all(n.endswith(".ids.u16") for n in names)
        rows = list(iter_shard(str(shard_dir / s["name"])))
        assert sum(r.size for _, r in rows) == s["tokens"]
        for _, r in rows:
            assert r[0] == 2 and r[-1] == 3 and r.size <= SEQ and 0 not in r and 4 not in r and (r == 3).sum() in (1, 2)
            lengths.append(r.size)
        total += len(rows)
    assert total == m["samples"]
    assert np.mean(np.array(lengths) == SEQ) > 0.6  # most sequences are packed full
    # token types: 0 through the first [SEP], 1 after it
    b = _take(PretrainLoader(str(shard_dir), _settings(), num_workers=0), 1)[0]
    for ids, tt in zip(b.original_ids, b.token_type_ids):
        first_sep = int((ids == 3).nonzero()[0])
        assert tt[: first_sep + 1].eq(0).all() and tt[first_sep + 1 :][ids[first_sep + 1 :] != 0].eq(1).all()


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_shards_deterministic_whatever_the_workers(tmp_path, tok_dir, shard_dir):
    build_shards([str(SAMPLE)], tok_dir, SEQ, tmp_path, samples_per_shard=500, workers=2, progress=False)
    names = sorted(p.name for p in shard_dir.glob("*.tar"))
    assert names == sorted(p.name for p in tmp_path.glob("*.tar"))
    for n in names:
        assert (tmp_path / n).read_bytes() == (shard_dir / n).read_bytes(), n
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_shards([str(SAMPLE)], tok_dir, SEQ, tmp_path, progress=False)


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_array_parts_merge_to_the_same_samples(tmp_path, tok_dir):
    single = tmp_path / "single"
    build_shards(
        [str(SAMPLE)], tok_dir, SEQ, single, samples_per_shard=300, workers=1, progress=False, chunk_chars=100_000
    )
    parts = tmp_path / "parts"
    for k in range(3):
        build_shards(
            [str(SAMPLE)],
            tok_dir,
            SEQ,
            parts,
            samples_per_shard=300,
            workers=1,
            progress=False,
            chunk_chars=100_000,
            part=k,
            num_parts=3,
        )
    with pytest.raises(ValueError, match="missing"):
        (parts / "manifest.part-002.json").rename(parts / "x.json")
        merge_manifests(parts)
    (parts / "x.json").rename(parts / "manifest.part-002.json")
    m = merge_manifests(parts)

    def rows(d):
        return sorted(tuple(r.tolist()) for u in resolve_shards(str(d))[0] for _, r in iter_shard(u))

    assert m["samples"] == read_manifest(single)["samples"]
    assert rows(parts) == rows(single)


# ---- loader -----------------------------------------------------------------------------------


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_every_sample_exactly_once_per_epoch_across_ranks_and_workers(shard_dir):
    urls, m = resolve_shards(str(shard_dir))
    all_keys = [k for u in urls for k, _ in iter_shard(u)]
    for consumers in (4, 16):  # 16 > shards: samples are dealt out by index instead
        stream = ShardStream(urls, _settings())
        seen = []
        for c in range(consumers):
            for epoch, key, _ in stream.samples(c, consumers):
                if epoch > 0:
                    break
                seen.append(key)
        assert sorted(seen) == sorted(all_keys), consumers


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
@pytest.mark.parametrize("split", ["batch", "shards"])
def test_exact_resume_2_ranks_x_2_workers(shard_dir, split):
    def loader(rank):
        return PretrainLoader(str(shard_dir), _settings(), rank, 2, num_workers=2, dp_split=split)

    for rank in (0, 1):
        straight = _take(loader(rank), 15)
        first = loader(rank)
        a = _take(first, 7)
        state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint
        resumed = loader(rank)
        resumed.load_state_dict(state)
        b = _take(resumed, 4)  # an odd count, then a second resume: the worker rotation must hold
        again = loader(rank)
        again.load_state_dict(resumed.state_dict())
        assert _same(straight, a + b + _take(again, 4))
    r0, r1 = _take(loader(0), 10), _take(loader(1), 10)
    assert not {k for b in r0 for k in b.keys} & {k for b in r1 for k in b.keys}


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_global_batches_are_the_same_for_any_dp_size_and_accumulation_and_resume_across_them(shard_dir):
    """dp_split=batch: slice k of step s holds the same samples and dropout seed whether DP 1 × 4
    micro-steps, DP 2 × 2 or DP 4 × 1 computes it; a position saved at one layout resumes at another."""

    def slices(dp, accum, steps, state=None):
        out = {}
        for rank in range(dp):
            loader = PretrainLoader(
                str(shard_dir), _settings(micro_batch_size=4), rank, dp, num_workers=2, grad_accum=accum
            )
            if state is not None:
                loader.load_state_dict(state)
            for i, b in enumerate(_take(loader, steps * accum)):
                step, a = divmod(i, accum)
                out[step, a * dp + rank] = (b.keys, b.dropout_seed, b.input_ids)
        return out, loader.state_dict()

    ref, _ = slices(1, 4, 3)
    for dp, accum in ((2, 2), (4, 1)):
        got, _ = slices(dp, accum, 3)
        assert got.keys() == ref.keys()
        assert all(got[k][:2] == ref[k][:2] and torch.equal(got[k][2], ref[k][2]) for k in ref), (dp, accum)
    assert len({ref[k][1] for k in ref}) == len(ref)  # every slice its own dropout seed
    _, state = slices(2, 2, 2)  # two steps on DP 2, then on DP 4
    later, _ = slices(4, 1, 1, json.loads(json.dumps(state)))
    assert {k: v[:2] for k, v in later.items()} == {(0, k): ref[2, k][:2] for k in range(4)}


def test_same_dp_rank_same_batches_and_seeded_shuffle(shard_dir):
    # tensor-parallel ranks of one DP group build the loader with the same dp_rank
    a = _take(PretrainLoader(str(shard_dir), _settings(), 1, 2, num_workers=2), 5)
    b = _take(PretrainLoader(str(shard_dir), _settings(), 1, 2, num_workers=2), 5)
    assert _same(a, b)
    c = _take(PretrainLoader(str(shard_dir), _settings(seed=4), 1, 2, num_workers=2), 5)
    assert [x.keys for x in a] != [x.keys for x in c]


def test_resume_with_other_workers_is_refused(shard_dir):
    first = PretrainLoader(str(shard_dir), _settings(), num_workers=2)
    _take(first, 3)
    other = PretrainLoader(str(shard_dir), _settings(), num_workers=1)
    with pytest.raises(ValueError, match="num_workers: checkpoint 2 ≠ now 1"):
        other.load_state_dict(first.state_dict())


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_multiple_epochs_reshuffle(tmp_path, tok_dir):
    build_shards([str(SAMPLE)], tok_dir, SEQ, tmp_path, samples_per_shard=10000, workers=1, progress=False)
    m = read_manifest(tmp_path)
    per_epoch = m["samples"] // 8
    batches = _take(PretrainLoader(str(tmp_path), _settings(), num_workers=0), 2 * per_epoch + 2)
    assert batches[0].epoch == 0 and batches[-1].epoch == 2
    e0 = [k for b in batches if b.epoch == 0 for k in b.keys]
    e1 = [k for b in batches if b.epoch == 1 for k in b.keys]
    assert e0[:50] != e1[:50] and set(e1) <= set(e0 + e1)


def test_globs_brace_lists_pipe_and_http(shard_dir):
    names = sorted(p.name for p in shard_dir.glob("shard-*.tar"))  # eval-*.tar: the held-out split
    brace = str(shard_dir / f"shard-000-{{000000..{len(names) - 1:06d}}}.tar")
    for spec in (str(shard_dir / "shard-*.tar"), brace):
        urls, manifest = resolve_shards(spec)
        assert [Path(u).name for u in urls] == names and manifest is not None
    expected = [k for k, _ in iter_shard(str(shard_dir / names[0]))]
    assert [k for k, _ in iter_shard(f"pipe:cat {shard_dir / names[0]}")] == expected

    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(shard_dir), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        url = f"http://127.0.0.1:{port}/shard-000-{{000000..000001}}.tar"
        loader = PretrainLoader(url, _settings(), num_workers=1)
        batch = _take(loader, 2)
        assert all(k.startswith(("000-000000", "000-000001")) for b in batch for k in b.keys)
    finally:
        server.shutdown()


def test_corrupt_shard_error_names_shard_and_offset_or_skips(tmp_path, shard_dir):
    for p in shard_dir.glob("*.tar"):
        shutil.copy(p, tmp_path / p.name)
    shutil.copy(shard_dir / "manifest.json", tmp_path / "manifest.json")
    victim = tmp_path / "shard-000-000001.tar"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] + b"\x13garbage" * 100)
    with pytest.raises(CorruptShardError, match=r"shard-000-000001\.tar: after \d+ good samples, near byte \d+"):
        list(iter_shard(str(victim)))
    good = list(iter_shard(str(victim), on_corrupt="skip"))
    assert 0 < len(good) < 500
    loader = PretrainLoader(str(tmp_path), _settings(on_corrupt="skip", shuffle_buffer=1), num_workers=0)
    assert len(_take(loader, 200)) == 200  # goes on past the broken shard


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_compatibility_checks(shard_dir, tmp_path):
    m = read_manifest(shard_dir)
    train_tokenizer([str(SAMPLE)], 1500, tmp_path / "other", input_sentence_size=2000)
    with pytest.raises(ValueError) as e:
        check_compatible(m, SentencePieceTokenizer(tmp_path / "other"), 128)
    assert "tokenizer sha256" in str(e.value) and "train.seq_len=128" in str(e.value)


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_cli_tokenizer_shards_bench(tmp_path, cli):

    r = cli("tokenizer", "train", "--input", str(SAMPLE), "--vocab-size", "1000", "--out", str(tmp_path / "tok"))
    assert r.returncode == 0, r.stderr
    r = cli(
        "shards",
        "build",
        "--input",
        str(SAMPLE),
        "--tokenizer",
        str(tmp_path / "tok"),
        "--seq-len",
        "128",
        "--out",
        str(tmp_path / "sh"),
        "--workers",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert "tokens/s" in r.stdout and "tok/s" in r.stderr  # summary and the progress bar
    r = cli("bench", "data", "--shards", str(tmp_path / "sh"), "--workers", "1", "--batches", "20")
    assert r.returncode == 0 and "per worker" in r.stdout, r.stderr
    r = cli(
        "shards",
        "build",
        "--input",
        str(tmp_path / "missing.txt"),
        "--tokenizer",
        str(tmp_path / "tok"),
        "--seq-len",
        "128",
        "--out",
        str(tmp_path / "sh2"),
    )
    assert r.returncode == 2 and "missing.txt" in r.stderr


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_full_packing_leaves_no_padding_and_official_packing_does(tmp_path, tok_dir, shard_dir):
    """The default (full) packing: every sequence exactly seq_len, so no batch is ever padded; the
    official packing pads (document ends, 5 % short targets) — what full packing is chosen over."""
    m = read_manifest(shard_dir)
    assert m["packing"] == "full"
    lengths = [row.size for s in m["shards"] for _, row in iter_shard(str(shard_dir / s["name"]))]
    assert set(lengths) == {SEQ} and m["tokens"] > 0.9 * m["text_tokens"]
    assert not any(b.padded for b in _take(PretrainLoader(str(shard_dir), _settings(), num_workers=0), 20))
    official = build_shards(
        [str(SAMPLE)], tok_dir, SEQ, tmp_path, samples_per_shard=500, progress=False, packing="official"
    ).manifest
    rows = [row.size for s in official["shards"] for _, row in iter_shard(str(tmp_path / s["name"]))]
    assert official["packing"] == "official" and min(rows) < SEQ and sum(rows) < len(rows) * SEQ
    assert any(b.padded for b in _take(PretrainLoader(str(tmp_path), _settings(), num_workers=0), 20))
    with pytest.raises(ValueError, match="--packing: 'tight' is not one of"):
        build_shards([str(SAMPLE)], tok_dir, SEQ, tmp_path / "x", packing="tight", progress=False)


def test_a_manifest_never_smuggles_in_a_pipe_command_or_another_path(tmp_path, shard_dir):
    """`pipe:` runs a shell command: it is accepted from data.shards as typed, never from a manifest."""
    shutil.copytree(shard_dir, tmp_path / "s")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    for evil in ("pipe:touch /tmp/owned-by-a-manifest", "../elsewhere.tar", "/etc/passwd", "http://x/y.tar"):
        m["shards"][0]["name"] = evil
        (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ValueError, match="shard names must be plain .tar file names"):
            resolve_shards(str(tmp_path / "s"))
    assert not Path("/tmp/owned-by-a-manifest").exists()


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_a_one_line_10mb_document_is_cut_into_pieces_and_kept(tmp_path, cli, real_documents):
    """No sentence ends for megabytes: SentencePiece would skip it (then fail with `!sentences_.empty()`)
    and the packer kept one example of it. Both now cut it into pieces, keep it, and say so."""
    words = " ".join(real_documents).replace("\n", " ")
    line = "".join(c for c in words if c not in ".!?")
    line = (line + " ") * (10_000_000 // len(line) + 1)
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": line[:10_000_000]}) + "\n")
    r = cli(
        "tokenizer",
        "train",
        "--input",
        str(tmp_path / "one.jsonl"),
        "--vocab-size",
        "500",
        "--out",
        str(tmp_path / "tok"),
        "--input-sentence-size",
        "400",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 sentence(s) had no sentence end" in r.stderr and "cut into" in r.stdout
    r = cli(
        "shards",
        "build",
        "--input",
        str(tmp_path / "one.jsonl"),
        "--tokenizer",
        str(tmp_path / "tok"),
        "--seq-len",
        "128",
        "--out",
        str(tmp_path / "sh"),
        "--quiet",
        "--workers",
        "1",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((tmp_path / "sh" / "manifest.json").read_text())
    assert manifest["text"]["long_sentences"] == 1 and manifest["tokens"] > 0.99 * manifest["text_tokens"]
    assert manifest["samples"] > 10_000 and "had no sentence end" in r.stderr


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_a_zero_filled_shard_is_caught_by_the_manifest_count(tmp_path, shard_dir):
    for p in shard_dir.glob("*.tar"):
        shutil.copy(p, tmp_path / p.name)
    shutil.copy(shard_dir / "manifest.json", tmp_path / "manifest.json")
    victim = tmp_path / "shard-000-000001.tar"
    victim.write_bytes(bytes(victim.stat().st_size))  # what a lost write on some file systems leaves
    assert list(iter_shard(str(victim))) == []  # a valid, empty tar as far as tar is concerned
    loader = PretrainLoader(str(tmp_path), _settings(shuffle_buffer=1), num_workers=0)
    with pytest.raises(CorruptShardError, match=r"shard-000-000001\.tar: it holds 0 samples but the manifest says 500"):
        _take(loader, 10_000)
    loader = PretrainLoader(str(tmp_path), _settings(on_corrupt="skip", shuffle_buffer=1), num_workers=0)
    assert len(_take(loader, 200)) == 200


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_shards_hold_out_an_eval_split_by_document_the_same_whatever_the_workers(tmp_path, tok_dir):
    a = build_shards(
        [str(SAMPLE)],
        tok_dir,
        SEQ,
        tmp_path / "a",
        samples_per_shard=500,
        workers=1,
        progress=False,
        eval_fraction=0.05,
        chunk_chars=50_000,
    ).manifest
    b = build_shards(
        [str(SAMPLE)],
        tok_dir,
        SEQ,
        tmp_path / "b",
        samples_per_shard=500,
        workers=2,
        progress=False,
        eval_fraction=0.05,
        chunk_chars=50_000,
    ).manifest
    assert a["eval_samples"] > 20 and [s["name"] for s in a["eval_shards"]] == ["eval-000-000000.tar"]
    for s in a["shards"] + a["eval_shards"]:  # byte-identical, whatever the workers
        assert (tmp_path / "a" / s["name"]).read_bytes() == (tmp_path / "b" / s["name"]).read_bytes()
    assert a["samples"] == b["samples"]
    train_rows = {tuple(r.tolist()) for u in resolve_shards(str(tmp_path / "a"))[0] for _, r in iter_shard(u)}
    eval_rows = [tuple(r.tolist()) for _, r in iter_shard(str(tmp_path / "a" / "eval-000-000000.tar"))]
    assert len(eval_rows) == a["eval_samples"] and not train_rows & set(eval_rows)  # held out, not copied
    assert a["tokens"] + sum(s["tokens"] for s in a["eval_shards"]) > 0.98 * a["text_tokens"]  # nothing lost
    none = build_shards([str(SAMPLE)], tok_dir, SEQ, tmp_path / "c", progress=False, eval_fraction=0.0).manifest
    assert none["eval_shards"] == [] and none["samples"] > a["samples"]
