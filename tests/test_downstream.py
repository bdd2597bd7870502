"""Fine-tuning as ELECTRA is judged (electra_dist.finetune): every task kind on transformers' Trainer from a
checkpoint of ours, each metric against a hand-computed value, SQuAD's windows and decoding over a context
longer than one window, layer-wise LR decay, --lr auto, the saved model in the Auto classes, and `glue` on a
folder in the GLUE distribution's format. The labeled sets are made from the built-in sample's real text
(tests/finetune_data.py)."""

from __future__ import annotations

import json

import finetune_data as fd
import numpy as np
import pytest
import torch

from electra_dist.finetune import Hyper, finetune, load_task, metrics, qa
from electra_dist.finetune import encode as E
from electra_dist.finetune.model import layer_lr_groups, size_defaults
from electra_dist.finetune.tasks import Split
from electra_dist.interop import save_model
from electra_dist.model import ElectraPretrainer

from conftest import tiny_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok_dir):
    """A tiny ELECTRA checkpoint of ours (random weights) with the sample's SentencePiece tokenizer."""
    cfg = tiny_config(**{"model.vocab_size": 2000, "data.tokenizer": str(tok_dir)})
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("ckpt"), ElectraPretrainer(cfg.model, cfg.objective), cfg)


@pytest.fixture(scope="module")
def modern_ckpt(tmp_path_factory, tok_dir):
    """The same with ModernBERT's block (model.architecture=modern): fine-tuned as transformers' ModernBERT."""
    modern = {"model.architecture": "modern", "model.embedding_size": 64, "model.local_window": 16}
    cfg = tiny_config(**{"model.vocab_size": 2000, "data.tokenizer": str(tok_dir), **modern})
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("modern"), ElectraPretrainer(cfg.model, cfg.objective), cfg)


# ---- metrics against values computed by hand -----------------------------------------------------------


def test_each_metric_equals_its_hand_computed_value():
    # pred 1 0 1 1 / gold 1 0 0 1: TP 2, TN 1, FP 1, FN 0
    m = metrics.classification([1, 0, 1, 1], [1, 0, 0, 1], 2)
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    assert m["mcc"] == pytest.approx((2 * 1 - 1 * 0) / np.sqrt(3 * 2 * 1 * 2))  # (TP·TN − FP·FN)/√(...)
    assert m["macro_f1"] == pytest.approx((0.8 + 2 * 1 / (2 * 1 + 0 + 1)) / 2)  # label 0: TP 1, FN 1
    # x = 1 2 3 4, y = 2 4 6 9: Σdxdy 11.5, Σdx² 5, Σdy² 26.75; ranks equal (monotonic)
    r = metrics.regression([1, 2, 3, 4], [2, 4, 6, 9])
    assert r["pearson"] == pytest.approx(11.5 / np.sqrt(5 * 26.75)) and r["spearman"] == pytest.approx(1.0)
    assert r["mse"] == pytest.approx((1 + 4 + 9 + 25) / 4)
    # entities: gold PER(0-1), LOC(3), LOC(5); predicted PER(0-1) right, ORG(3) wrong type, LOC(5) right, a
    # LOC(6) that is not there; a PER cut short (I- without its B-) is a wrong boundary
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-LOC", "O"], ["B-PER", "I-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-LOC", "B-LOC"], ["B-PER", "O"]]
    e = metrics.entities(pred, gold)
    assert e["precision"] == pytest.approx(2 / 5) and e["recall"] == pytest.approx(2 / 4)
    assert e["f1"] == pytest.approx(2 * (2 / 5) * (2 / 4) / (2 / 5 + 2 / 4))
    # SQuAD: normalization (case, punctuation, articles), token F1, the best over gold answers, null answers
    s = metrics.squad(
        {"a": "The Eiffel Tower!", "b": "Eiffel", "c": "", "d": "Paris"},
        {"a": ["Eiffel Tower"], "b": ["the Eiffel Tower", "a tower"], "c": [], "d": []},
    )
    assert s["exact"] == pytest.approx(100 * (1 + 0 + 1 + 0) / 4)
    assert s["f1"] == pytest.approx(100 * (1 + 2 * (1 * 0.5) / 1.5 + 1 + 0) / 4)
    assert s["HasAns_exact"] == 50.0 and s["NoAns_exact"] == 50.0 and s["HasAns_total"] == s["NoAns_total"] == 2


def test_size_defaults_are_the_papers():
    assert (
        size_defaults(256) == (3e-4, 0.8) and size_defaults(768) == (1e-4, 0.8) and size_defaults(1024) == (5e-5, 0.9)
    )


def test_layer_wise_lr_decay_has_no_off_by_one():
    from transformers import ElectraConfig, ElectraForSequenceClassification

    cfg = ElectraConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=2)  # fmt: skip
    m = ElectraForSequenceClassification(cfg)
    scale = {id(p): g["lr"] for g in layer_lr_groups(m, lr=1.0, decay=0.5, weight_decay=0.01) for p in g["params"]}
    assert scale[id(m.classifier.out_proj.weight)] == 1.0 and scale[id(m.classifier.dense.weight)] == 1.0  # head
    assert scale[id(m.electra.encoder.layer[1].output.dense.weight)] == 0.5  # top layer: lr·d, not lr·d²
    assert scale[id(m.electra.encoder.layer[0].output.dense.weight)] == 0.25
    assert scale[id(m.electra.embeddings.word_embeddings.weight)] == 0.125  # embeddings: lr·d^(L+1)
    assert scale[id(m.electra.embeddings_project.weight)] == 0.125
    groups = layer_lr_groups(m, 1.0, 0.5, 0.01)
    assert all(p.ndim == 1 for g in groups if g["weight_decay"] == 0.0 for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


def test_layer_wise_lr_decay_reads_modernbert_s_names():
    """ModernBERT's `model.layers.i` (and its final norm, the top layer's), not only BERT's `encoder.layer.i`:
    a modern discriminator fine-tuned without it would get one LR everywhere."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    cfg = ModernBertConfig(vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                           sep_token_id=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=48, num_labels=2)  # fmt: skip
    m = ModernBertForSequenceClassification(cfg)
    scale = {id(p): g["lr"] for g in layer_lr_groups(m, lr=1.0, decay=0.5, weight_decay=0.01) for p in g["params"]}
    assert scale[id(m.classifier.weight)] == 1.0 and scale[id(m.head.dense.weight)] == 1.0  # head
    assert scale[id(m.model.final_norm.weight)] == 0.5 and scale[id(m.model.layers[1].mlp.Wo.weight)] == 0.5
    assert scale[id(m.model.layers[0].attn.Wqkv.weight)] == 0.25
    assert scale[id(m.model.embeddings.tok_embeddings.weight)] == 0.125
    assert sum(len(g["params"]) for g in layer_lr_groups(m, 1.0, 0.5, 0.01)) == len(list(m.parameters()))


# ---- reading the formats ----------------------------------------------------------------------------------


def test_every_format_is_read_and_its_kind_detected(tmp_path):
    tr, te = fd.conll(tmp_path, n=20)
    t = load_task(tr, te)
    assert t.kind == "token" and "-DOCSTART-" not in t.train.texts[0] and t.label_names[-1] == "O"
    assert all(len(w) == len(y) for w, y in zip(t.train.texts, t.train.labels))
    rows = [{"tokens": w, "tags": y} for w, y in zip(t.train.texts, t.train.labels)]
    jl = fd.write_jsonl(tmp_path / "ner.jsonl", rows)
    assert load_task(jl, jl).train.labels == t.train.labels  # the same sentences as JSONL tokens/tags
    for version_2 in (False, True):
        tr, te = fd.squad(tmp_path, n=12, version_2=version_2)
        s = load_task(tr, te)
        assert s.kind == "qa" and len(s.train.ids) == len(s.train) == 9
        assert any(not a for a in s.train.labels) == version_2
        for ctx, golds in zip(s.train.texts, s.train.labels):
            assert all(ctx[a["answer_start"] :].startswith(a["text"]) for a in golds)
    tr, te = fd.regression(tmp_path, n=20)
    assert load_task(tr, te, pair_field="pair").kind == "regression"
    bad = fd.write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "label": "x"}, {"txt": "b", "label": "y"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: has no field 'text'"):
        load_task(bad, bad)
    conll = tmp_path / "bad.conll"
    conll.write_text("word O\nlonely\n")
    with pytest.raises(ValueError, match=r"bad.conll:2: 'lonely' is not `token … tag`"):
        load_task(conll, conll)


# ---- SQuAD windows and decoding ---------------------------------------------------------------------------


def test_qa_answer_in_the_second_window_is_labeled_and_decoded(tok_dir):
    """A context of ~100 tokens in windows of 48 (stride 16): the answer near the end lies in a later window;
    the first is labeled [CLS]; logits peaking at the labeled tokens decode to the answer's text, through
    offsets; SQuAD v2.0 answers null when [CLS] scores higher."""
    from electra_dist.interop.hf_tokenizer import hf_tokenizer

    tok = hf_tokenizer(tok_dir)
    filler = "It is a truth universally acknowledged that a single man must be in want of a wife. " * 5
    context = filler + "The whale was first seen near Nantucket in the spring."
    start = context.index("Nantucket")
    split = Split([context], [[{"text": "Nantucket", "answer_start": start}]], ["Where was the whale seen?"], ["q1"])
    win = qa.windows(tok, split, max_len=48, stride=16, labels=True)
    assert len(win.inputs) >= 3 and set(win.example) == {0}
    labeled = [i for i, r in enumerate(win.inputs) if r["start_positions"] > 0]
    assert labeled and labeled[0] > 0 and win.inputs[0]["start_positions"] == win.inputs[0]["end_positions"] == 0
    w = labeled[-1]
    s, e = win.inputs[w]["start_positions"], win.inputs[w]["end_positions"]
    assert context[win.offsets[w][s][0] : win.offsets[w][e][1]].strip() == "Nantucket"
    start_logits = np.zeros((len(win.inputs), 48))
    end_logits = np.zeros((len(win.inputs), 48))
    start_logits[w, s], end_logits[w, e] = 5.0, 5.0
    assert qa.decode(split, win, start_logits, end_logits, version_2=False) == {"q1": "Nantucket"}
    start_logits[:, 0] = end_logits[:, 0] = 6.0  # the null answer scores 12 > 10 in every window
    assert qa.decode(split, win, start_logits, end_logits, version_2=True) == {"q1": ""}
    assert qa.decode(split, win, start_logits, end_logits, version_2=False) == {"q1": "Nantucket"}


# ---- each kind end to end --------------------------------------------------------------------------------


def _reloaded_metrics(out, task, hp):
    """The metrics of `out` loaded with transformers' Auto class on the test set, without our Trainer."""
    import transformers

    model = getattr(transformers, E.AUTO_CLASS[task.kind]).from_pretrained(str(out)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    enc = E.encode(task, tok, task.test, hp.max_len, hp.stride)
    drop = ("labels", "start_positions", "end_positions")
    batch = E.collator(task.kind, tok)([{k: v for k, v in r.items() if k not in drop} for r in enc.rows])
    with torch.no_grad():
        out = model(**batch)
    logits = (out.start_logits.numpy(), out.end_logits.numpy()) if task.kind == "qa" else out.logits.numpy()
    return E.score(task, task.test, E.decode(task, task.test, enc, logits))


KINDS = {  # (task, metric, epochs, lr): each learnable by the tiny model from random weights
    "classification": (lambda d: load_task(*fd.sources(d)), "accuracy", 4, 1e-3),
    "regression": (lambda d: load_task(*fd.regression(d), pair_field="pair"), "pearson", 12, 3e-3),
    "token": (lambda d: load_task(*fd.conll(d)), "f1", 12, 3e-3),
    "qa": (lambda d: load_task(*fd.squad(d, version_2=False)), "f1", 3, 1e-3),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_beats_its_trivial_baseline_and_its_saved_model_reproduces_the_score(
    kind, ckpt, modern_ckpt, tmp_path
):
    """Classification from a modern checkpoint (exported on the fly as ModernBERT; layer-wise LR decay over
    its names): the BERT-block checkpoint's classification runs in the CLI and GLUE tests below."""
    make, metric, epochs, lr = KINDS[kind]
    task = make(tmp_path)
    hp = Hyper(epochs=epochs, lr=lr, batch_size=16, max_len=64, stride=16)
    model = modern_ckpt if kind == "classification" else ckpt
    r = finetune(model, task, hp, seeds=1, out=tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["model_type"]
    assert saved == ("modernbert" if kind == "classification" else "electra"), saved
    assert r.kind == kind and r.metric == metric and len(r.test) == 1
    assert r.test[0][metric] > r.baseline[1][metric] + 0.1, (r.test, r.baseline)
    again = _reloaded_metrics(tmp_path / "out", task, hp)
    assert again[metric] == pytest.approx(r.test[0][metric], abs=1e-6)


@pytest.mark.slow
def test_pairs_and_squad_v2_run_with_their_inputs_and_split(ckpt, tmp_path, tok_dir):
    """Sentence pairs get token types 0…0 1…1; SQuAD v2.0 reports HasAns/NoAns; its baseline is always-null."""
    from electra_dist.interop.hf_tokenizer import hf_tokenizer

    pairs = load_task(*fd.pairs(tmp_path, n=60), text_field="a", pair_field="b")
    row = E.encode(pairs, hf_tokenizer(tok_dir), pairs.train, 64).rows[0]
    sep = row["input_ids"].index(3)  # the first [SEP]: A's end
    assert set(row["token_type_ids"][: sep + 1]) == {0} and set(row["token_type_ids"][sep + 1 :]) == {1}
    r = finetune(ckpt, pairs, Hyper(epochs=1, lr=1e-3, batch_size=16, max_len=64), seeds=1)
    assert set(r.test[0]) == {"accuracy", "macro_f1", "mcc", "f1", "loss"}
    v2 = load_task(*fd.squad(tmp_path, n=60, version_2=True))
    r = finetune(ckpt, v2, Hyper(epochs=1, lr=1e-3, batch_size=16, max_len=64, stride=16), seeds=1)
    assert {"HasAns_f1", "NoAns_f1", "exact", "f1"} <= set(r.test[0])
    assert r.baseline[0] == "always null" and r.baseline[1]["NoAns_exact"] == 100.0


# ---- GLUE ------------------------------------------------------------------------------------------------


def test_glue_files_are_read_as_published(tmp_path):
    from electra_dist.finetune import glue

    d = fd.glue(tmp_path)
    cola = glue.task("cola", d)  # no header: the sentence is column 4, the label column 2
    assert cola.kind == "classification" and cola.label_names == ["0", "1"] and len(cola.train) == 24
    mrpc = glue.task("mrpc", d)
    first = (d / "MRPC" / "train.tsv").read_text().splitlines()[1].split("\t")
    assert (mrpc.train.texts[0], mrpc.train.pairs[0], mrpc.train.labels[0]) == (first[3], first[4], first[0])
    assert glue.task("stsb", d).kind == "regression"
    assert len(glue.task("mnli", d, "dev_mismatched.tsv").test) == 12
    assert glue.task("mnli", d).label_names == ["contradiction", "entailment", "neutral"]
    assert any('"' in t for name in glue.TASKS for t in glue.task(name, d).train.texts)  # quotes are text
    table = {"cola": {"mcc": 50.0, "score": 50.0}, "stsb": {"pearson": 80.0, "spearman": 70.0, "score": 75.0},
             "mnli-m": {"accuracy": 60.0, "score": 60.0}, "mnli-mm": {"accuracy": 70.0, "score": 70.0},
             "wnli": {"accuracy": 10.0, "score": 10.0}}  # fmt: skip
    assert glue.glue_score(table) == pytest.approx((50 + 75 + 65) / 3)  # MNLI m/mm averaged, WNLI left out


@pytest.mark.slow
def test_glue_command_prints_the_dev_table_of_all_nine_tasks(ckpt, tmp_path, cli):
    d = fd.glue(tmp_path / "GLUE")
    uri = f"sqlite:///{tmp_path / 'glue.db'}"
    r = cli("glue", "--model", ckpt, "--data-dir", d, "--epochs", "1", "--lr", "1e-3", "--max-len", "32",
            "--batch-size", "8", "--from-mnli", "--experiment", "glue", "--tracking-uri", uri)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in r.stdout.splitlines() if line.startswith("| ")}
    for task, metric in (("cola", "mcc"), ("sst2", "accuracy"), ("mrpc", "f1/accuracy"), ("stsb", "pearson/spearman"),
                         ("qqp", "f1/accuracy"), ("mnli-m", "accuracy"), ("mnli-mm", "accuracy"), ("qnli", "accuracy"),
                         ("rte", "accuracy"), ("wnli", "accuracy")):  # fmt: skip
        assert f"| {metric} |" in rows[task], rows
    assert "GLUE score (no WNLI)" in rows
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = {x.info.run_name: x for x in client.search_runs([client.get_experiment_by_name("glue").experiment_id])}
    assert {f"glue-{ckpt.name}-{t}" for t in ("cola", "mnli", "summary")} <= set(runs) and len(runs) == 10
    assert all(x.info.status == "FINISHED" for x in runs.values())
    score = float(rows["GLUE score (no WNLI)"].split("|")[3])
    assert runs[f"glue-{ckpt.name}-summary"].data.metrics["glue/score"] == pytest.approx(score, abs=0.05)
    assert "finetune/mcc" in runs[f"glue-{ckpt.name}-cola"].data.metrics


# ---- the command -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_finetune_cli_chooses_the_lr_on_dev_saves_the_best_seed_and_finishes_its_mlflow_run(ckpt, tmp_path, cli):
    """Defaults (--lr auto): the grid's dev scores printed and logged, the chosen LR one of the grid's; --out:
    the best seed as a transformers classifier + tokenizer that scores as reported; --experiment: one FINISHED
    run with every seed's metrics, the summary and the baseline."""
    import transformers
    from mlflow.tracking import MlflowClient

    train, test = fd.sources(tmp_path, n=60)
    uri = f"sqlite:///{tmp_path / 'ft.db'}"
    r = cli("finetune", "--model", ckpt, "--train", train, "--test", test, "--seeds", "2", "--epochs", "3",
            "--batch-size", "16", "--max-len", "64", "--out", tmp_path / "clf", "--experiment", "ft",
            "--tracking-uri", uri)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    grid = r.stdout.split("--lr auto: dev accuracy after 1 epoch(s) at lr ")[1].split(" → ")
    points = dict(p.split(": ") for p in grid[0].split(", "))
    assert list(points) == ["0.0001", "0.0003", "0.0009"] and float(grid[1].split()[0]) in {1e-4, 3e-4, 9e-4}
    assert "baseline, majority class" in r.stdout
    best = max(
        range(2), key=lambda s: float(r.stdout.split(f"seed {s}: test ")[1].split("dev accuracy ")[1].split()[0])
    )
    reported = float(r.stdout.split(f"seed {best}: test accuracy ")[1].split(",")[0])
    task = load_task(train, test)
    again = _reloaded_metrics(tmp_path / "clf", task, Hyper(max_len=64))
    assert again["accuracy"] == pytest.approx(reported, abs=1e-6)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf")
    assert sorted(model.config.id2label.values()) == task.label_names
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ft").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == f"finetune-{ckpt.name}-sources.train"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "finetune/accuracy")) == [0, 1]
    assert {"finetune/accuracy_mean", "finetune/accuracy_median", "finetune/baseline_accuracy"} <= set(run.data.metrics)
    assert {"finetune/lr_grid_dev_0.0001", "finetune/lr_grid_dev_0.0009"} <= set(run.data.metrics)
    assert float(run.data.params["chosen_lr"]) in {1e-4, 3e-4, 9e-4} and run.data.params["best_seed"] == str(best)


@pytest.mark.slow
def test_a_classifier_that_predicts_one_class_is_named(ckpt, tmp_path, monkeypatch, logged):
    task = load_task(*fd.sources(tmp_path, n=12))
    monkeypatch.setattr(E, "decode", lambda task, split, enc, logits: [0] * len(split))
    r = finetune(ckpt, task, Hyper(epochs=1, lr=1e-3, batch_size=16, max_len=32), seeds=1)
    assert r.test[0]["accuracy"] == pytest.approx(task.test.labels.count("janeausten") / len(task.test))
    assert any("seed 0 predicts only 'janeausten'" in line and "try --lr auto" in line for line in logged), logged


def test_lr_auto_takes_the_best_dev_score_and_breaks_ties_by_dev_loss(monkeypatch):
    """Where every grid point predicts the majority class (the same accuracy), the one whose dev loss fell
    most is the one that learns: a tie does not fall back to the size default that collapsed."""
    from electra_dist.finetune import run

    class Sets:
        dev, task = object(), None

        def __init__(self, dev):
            self.points = dev

        def score_dev(self, trainer, metric):
            return self.points[trainer]

    monkeypatch.setattr(run, "_train", lambda start, sets, hp, lr, *a, **k: round(lr, 8))
    result = run.Result("t", "classification", "accuracy")
    tie = Sets({1e-4: (0.6, 0.69), 3e-4: (0.6, 0.68), 9e-4: (0.6, 0.61)})
    assert run._choose_lr(result, None, tie, Hyper(), 3e-4) == pytest.approx(9e-4)
    assert sorted(result.grid.values()) == [0.6, 0.6, 0.6] and len(result.grid) == 3
    best = Sets({1e-4: (0.7, 0.69), 3e-4: (0.6, 0.5), 9e-4: (0.65, 0.4)})
    assert run._choose_lr(run.Result("t", "classification", "accuracy"), None, best, Hyper(), 3e-4) == 1e-4
    assert run._choose_lr(result, None, best, Hyper(lr=2e-3), 3e-4) == 2e-3  # a number is taken as given
