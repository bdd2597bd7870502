"""The MLM baseline objective, the ELECTRA-vs-MLM experiment and fine-tuning's CPU threads (the fine-tuning
itself: tests/test_downstream.py)."""

import gzip
import json
import random

import pytest
import torch

from electra_dist.data.batch import Batch
from electra_dist.data.masking import mask_tokens
from electra_dist.data.vocab import SpecialIds
from electra_dist.interop import export_hf
from electra_dist.model import ElectraPretrainer, count_parameters
from electra_dist.tracking import read_metrics
from electra_dist.training.flops import flops_per_token

from conftest import SAMPLE, tiny_config


def test_mlm_objective_is_one_encoder_of_discriminator_size(tiny):
    cfg = tiny_config(**{"objective.kind": "mlm"})
    m = ElectraPretrainer(cfg.model, cfg.objective)
    assert m.discriminator is None and m.encoder_tower is m.generator
    assert len(m.generator.encoder.layers) == cfg.model.discriminator.num_layers
    assert m.generator.encoder.layers[0].attention_norm.normalized_shape == (cfg.model.discriminator.hidden_size,)
    ids = torch.randint(5, 1000, (4, 64))
    ids[:, 0], ids[:, -1] = 2, 3
    b = mask_tokens(
        ids, SpecialIds(), 0.15, mask_fraction=0.8, random_fraction=0.1, vocab_size=1000, sample_ids=torch.arange(4)
    )
    out = m(Batch.of(b, torch.arange(4)))
    assert out.loss == out.generator_loss and out.discriminator_loss == 0
    out.loss.backward()
    electra = ElectraPretrainer(tiny.model, tiny.objective)
    assert abs(count_parameters(m) - count_parameters(electra.discriminator)) / count_parameters(m) < 0.1
    # FLOPs: MLM is one encoder + its head at the masked positions; ELECTRA adds a small generator
    assert flops_per_token(cfg.model, 64, 0.15, "mlm") < flops_per_token(tiny.model, 64, 0.15, "electra")


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_mlm_checkpoint_exports_as_masked_lm(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = tiny_config(**{"objective.kind": "mlm"})
    m = ElectraPretrainer(cfg.model, cfg.objective).eval()
    export_hf(m, tmp_path)
    assert not (tmp_path / "discriminator").exists()
    hf = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "generator").eval()
    ids = torch.randint(5, 1000, (2, 16))
    with torch.no_grad():
        assert (hf(ids).logits - m.generator(ids, None, None)[..., :1000]).abs().max() < 1e-5


def _labeled(tmp_path, n=300, sources=("sotu", "janeausten"), name=""):
    """Real sentences, labeled by their source: State of the Union vs Jane Austen by default."""
    from electra_dist.data.text import split_sentences

    by = {s: [] for s in sources}
    with gzip.open(SAMPLE, "rt") as f:
        for line in f:
            d = json.loads(line)
            if d["source"] in by:
                by[d["source"]] += [s for s in split_sentences(d["text"]) if 30 < len(s) < 300]
    rng = random.Random(0)
    rows = [{"text": s, "label": src} for src, ss in by.items() for s in rng.sample(ss, n)]
    rng.shuffle(rows)
    train, test = tmp_path / f"{name}train.jsonl", tmp_path / f"{name}test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[: int(0.8 * len(rows))]))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[int(0.8 * len(rows)) :]))
    return train, test


@pytest.mark.slow
def test_experiment_runs_end_to_end_small_on_two_sets_and_goes_on_where_it_stopped(tmp_path):
    """The ELECTRA-vs-MLM experiment, shrunk to seconds: equal FLOPs, held-out metrics, both fine-tuned
    on two labeled sets with the control, a table with each set and the mean. Then a rerun after a
    "kill": a pre-training run that lost its final weights resumes from its checkpoint, a lost
    fine-tuning result is redone, and nothing else is run again."""
    from electra_dist.commands import experiment

    sets = [
        _labeled(tmp_path, n=40, name="austen-sotu."),
        _labeled(tmp_path, n=40, sources=("bible_web", "mobydick"), name="bible-moby."),
    ]
    results, out = tmp_path / "RESULTS.md", tmp_path / "exp"
    kw = dict(electra_steps=8, batch=8, seq_len=64, vocab_size=1000, seeds=1, finetune_epochs=1, samples_per_shard=500)
    rows = experiment.run([str(SAMPLE)], sets, out, results, **kw)
    assert set(rows) == {"electra", "mlm", "random init (control)"}
    assert rows["mlm"]["steps"] > rows["electra"]["steps"]  # MLM buys more steps with the same FLOPs
    assert abs(rows["mlm"]["flops"] - rows["electra"]["flops"]) / rows["electra"]["flops"] < 0.1
    assert (
        0 < rows["electra"]["eval"]["eval/discriminator_auc"] < 1
        and "eval/discriminator_auc" not in rows["mlm"]["eval"]
    )
    assert 0 < rows["electra"]["eval_share"] < 1
    for r in rows.values():
        assert set(r["tasks"]) == {"austen-sotu", "bible-moby"}
        assert r["mean"] == pytest.approx(sum(t["mean"] for t in r["tasks"].values()) / 2)
    text = results.read_text()
    assert "| austen-sotu acc. | bible-moby acc. | mean |" in text and "| electra | 8 |" in text
    assert "| random init (control) |" in text and "| majority class |" in text

    # a kill before the end: ELECTRA's last checkpoint, final weights and one fine-tuning result never written
    import shutil

    ckpts = out / "electra" / "checkpoints"
    shutil.rmtree(out / "electra" / "final")
    shutil.rmtree(ckpts / "step00000008")
    (ckpts / "latest").write_text("step00000007")
    (out / "finetune" / "mlm" / "bible-moby.json").unlink()
    kept = {
        p: p.stat().st_mtime_ns
        for p in [
            out / "mlm" / "final" / "model.pt",
            out / "finetune" / "mlm" / "austen-sotu.json",
            out / "finetune" / "random" / "bible-moby.json",
        ]
    }
    before = {r["step"]: r["time"] for r in read_metrics(out / "electra" / "metrics.jsonl")}
    again = experiment.run([str(SAMPLE)], sets, out, results, **kw)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # not run again
    assert (out / "electra" / "final" / "model.pt").is_file() and (
        out / "finetune" / "mlm" / "bible-moby.json"
    ).is_file()
    after = {r["step"]: r["time"] for r in read_metrics(out / "electra" / "metrics.jsonl")}
    assert sorted(after) == sorted(before) and after[8] > before[8]  # step 8 trained again: from the step-7
    assert all(after[s] == before[s] for s in range(1, 8))  # checkpoint, not from step 0
    assert again["mlm"]["tasks"]["austen-sotu"] == rows["mlm"]["tasks"]["austen-sotu"]
    assert results.read_text().count("## ELECTRA vs MLM") == 2


def test_cpu_threads_follow_the_job_not_the_machine(monkeypatch):
    """Fine-tuning's default threads: OMP_NUM_THREADS, else the job's CPUs less the busy ones."""
    import os

    from electra_dist import procs

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert procs.cpu_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert procs.cpu_threads() == (8, "8 CPUs usable")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert procs.cpu_threads() == (2, "SLURM_CPUS_PER_TASK=2")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setattr(os, "getloadavg", lambda: (6.6, 0.0, 0.0))  # another job keeps 7 of 8 busy
    assert procs.cpu_threads() == (1, "8 CPUs usable, load average 7: 1 free")
