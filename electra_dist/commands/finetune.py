"""`electra-dist finetune`: sequence classification from a pre-trained checkpoint, over several seeds.

The encoder pre-training keeps (ELECTRA's discriminator or the MLM encoder), from our checkpoint or an HF
export; head [CLS] → dense → gelu → dropout → linear (ElectraClassificationHead). Layer-wise LR decay: the
head gets lr, layer i (1-based) of L lr·d^(L+1-i), the embeddings lr·d^(L+1) (the official code gives every
layer one power too many). AdamW and pre-training's schedule (10 % warm-up). LR and layer decay by size, as
the paper (Small 3e-4 / 0.8, Base 1e-4 / 0.8, Large 5e-5 / 0.9). A dev split carved from train picks the
best seed; test accuracy and macro-F1 per seed, the majority baseline beside them, a warning when a model
predicts one class. `out`: the best seed as a transformers ElectraForSequenceClassification + tokenizer.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from electra_dist.config import OptimConfig
from electra_dist.training.optim import build_optimizer, lr_schedule


@dataclass
class FinetuneResult:
    accuracies: list[float]
    seconds: float
    labels: list[str]
    macro_f1: list[float] = field(default_factory=list)
    dev_accuracies: list[float] = field(default_factory=list)
    majority: float = 0.0  # test accuracy of always predicting the train set's most frequent label
    best_seed: int = 0
    lr: float = 0.0
    layer_decay: float = 0.0

    @property
    def mean(self) -> float:
        return statistics.mean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


class Classifier(nn.Module):
    def __init__(self, tower: nn.Module, hidden: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.tower = tower
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, num_labels)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None = None) -> torch.Tensor:
        h = self.tower.encode(ids, mask, types)[:, 0]  # [CLS]
        return self.out_proj(self.dropout(F.gelu(self.dense(self.dropout(h)))))


def layer_lr_groups(model: Classifier, lr: float, decay: float, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with layer-wise LR decay (see the module docstring), no decay on 1-D params."""
    L = len(model.tower.encoder.layers)
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if name.startswith("tower.encoder.layers."):
            depth = int(name.split(".")[3]) + 1  # layer i, 1-based
        elif name.startswith("tower."):
            depth = 0  # embeddings and their projection
        else:
            depth = L + 1  # the task head
        scale = decay ** (L + 1 - depth)
        groups.setdefault((scale, p.ndim > 1), []).append(p)
    return [
        {"params": ps, "lr": lr * scale, "lr_scale": scale, "weight_decay": weight_decay if matrix else 0.0}
        for (scale, matrix), ps in sorted(groups.items(), key=lambda kv: kv[0][0])
    ]


def load_encoder(model_dir: str | Path):
    """(tower, hidden size, tokenizer dir, ModelConfig) from our checkpoint (final/ or any training
    checkpoint) or an HF export."""
    from electra_dist.data.hf_vocab import is_hf_tokenizer_dir
    from electra_dist.interop import import_hf, load_model

    path = Path(model_dir)
    if (path / "config.json").is_file() or (path / "discriminator").is_dir():
        model = import_hf(path)
        d = path / "discriminator" if (path / "discriminator").is_dir() else path
        tok = d if (d / "spm.model").is_file() or is_hf_tokenizer_dir(d) else None
    else:
        try:
            model, cfg = load_model(path)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"--model: {path} is neither our checkpoint (final/ or a training checkpoint) "
                f"nor a Hugging Face ELECTRA export (config.json): {e}"
            ) from None
        tok = Path(cfg.data.tokenizer) if cfg.data.tokenizer else None
    if model.discriminator is not None:
        model.discriminator.fold_embedding_delta()  # GDES: the discriminator's own embeddings, as plain tables
    return model.encoder_tower, model.cfg.discriminator.hidden_size, tok, model.cfg


def size_defaults(hidden: int) -> tuple[float, float]:
    """(LR, layer decay) of the paper's fine-tuning by model size: Small, Base, Large."""
    return (3e-4, 0.8) if hidden <= 256 else (1e-4, 0.8) if hidden <= 768 else (5e-5, 0.9)


def read_labeled(path: str | Path, text_field: str, label_field: str, pair_field: str | None = None):
    """(texts, second texts or None, labels) of a JSONL file."""
    texts, pairs, labels = [], [], []
    fields = [text_field, label_field] + ([pair_field] if pair_field else [])
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        missing = [f for f in fields if f not in obj]
        if missing:
            raise ValueError(
                f"{path}:{n}: has no field {', '.join(map(repr, missing))} (it has {sorted(obj)}): set "
                "--text-field / --label-field / --text-pair-field to its field names"
            )
        texts.append(str(obj[text_field]))
        labels.append(str(obj[label_field]))
        if pair_field:
            pairs.append(str(obj[pair_field]))
    if not texts:
        raise ValueError(f"{path}: no examples")
    return texts, (pairs if pair_field else None), labels


def encode(tokenizer, texts: list[str], max_len: int, pairs: list[str] | None = None):
    """(ids, mask, token types): `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]` (types 0…0 1…1), as pre-training."""
    sp = tokenizer.special
    firsts = tokenizer.encode_batch(texts)
    seconds = tokenizer.encode_batch(pairs) if pairs else [None] * len(firsts)
    rows, types = [], []
    for a, b in zip(firsts, seconds):
        if b is None:
            rows.append([sp.cls] + a[: max_len - 2] + [sp.sep])
            types.append([0] * len(rows[-1]))
            continue
        while len(a) + len(b) > max_len - 3:  # trim the longer one, as BERT's pair truncation
            if len(a) >= len(b):
                a = a[:-1]
            else:
                b = b[:-1]
        rows.append([sp.cls] + a + [sp.sep] + b + [sp.sep])
        types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
    S = max(len(r) for r in rows)
    ids = torch.full((len(rows), S), sp.pad, dtype=torch.long)
    tt = torch.zeros_like(ids)
    for i, (r, t) in enumerate(zip(rows, types)):
        ids[i, : len(r)], tt[i, : len(t)] = torch.tensor(r), torch.tensor(t)
    return ids, (ids != sp.pad).long(), tt


def _device(threads: int | None, log) -> torch.device:
    """The GPU if there is one; else the CPU with `threads` (or what the allocation grants) threads."""
    from electra_dist.procs import cpu_threads

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        n, why = (threads, "--threads") if threads else cpu_threads()
        torch.set_num_threads(n)
        log(f"finetune: {n} CPU thread{'s' if n > 1 else ''} ({why})")
    return device


def _task(
    tokenizer, train: str, test: str, text_field: str, label_field: str, pair_field: str | None, max_len: int
) -> tuple[list[str], tuple, tuple]:
    """The label names and (ids, mask, types, labels) of the training and the test file."""
    tr_text, tr_pair, tr_lab = read_labeled(train, text_field, label_field, pair_field)
    te_text, te_pair, te_lab = read_labeled(test, text_field, label_field, pair_field)
    names = sorted(set(tr_lab))
    unknown = sorted(set(te_lab) - set(names))
    if unknown:
        raise ValueError(f"{test}: labels {unknown} do not occur in {train}")
    index = {n: i for i, n in enumerate(names)}
    fit = (*encode(tokenizer, tr_text, max_len, tr_pair), torch.tensor([index[x] for x in tr_lab]))
    held = (*encode(tokenizer, te_text, max_len, te_pair), torch.tensor([index[x] for x in te_lab]))
    return names, fit, held


def _fit(
    model,
    opt,
    sched,
    fit: torch.Tensor,
    data: tuple,
    epochs: int,
    batch_size: int,
    seed: int,
    steps: int,
    device: torch.device,
    log,
) -> None:
    """`epochs` passes over the rows `fit` of (ids, mask, types, labels), shuffled by `seed`, with a
    progress bar (plain lines where there is no terminal)."""
    from tqdm import tqdm

    xtr, mtr, ttr, ytr = data
    g = torch.Generator().manual_seed(seed)
    bar, done = tqdm(total=steps, desc=f"finetune seed {seed}", unit="step", leave=False, disable=None), 0
    for _epoch in range(epochs):
        model.train()
        perm = fit[torch.randperm(len(fit), generator=g)]
        for i in range(0, len(perm), batch_size):
            b = perm[i : i + batch_size]
            ids, mask, types = _trim(xtr[b], mtr[b], ttr[b])
            loss = F.cross_entropy(model(ids.to(device), mask.to(device), types.to(device)), ytr[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            done += 1
            if bar.disable and done % max(1, steps // 10) == 0:  # no terminal (a SLURM log): a plain line
                log(f"finetune seed {seed}: step {done}/{steps}, loss {loss.item():.3f}")
    bar.close()


def _report_seed(
    result: FinetuneResult,
    seed: int,
    acc: float,
    f1: float,
    dev_acc: float | None,
    pred: torch.Tensor,
    budget: str,
    log,
    tracker,
) -> None:
    """One seed's scores: kept, logged (with a warning when it predicts one class only) and tracked."""
    result.accuracies.append(acc)
    result.macro_f1.append(f1)
    result.dev_accuracies.append(dev_acc or 0.0)
    dev = f", dev accuracy {dev_acc:.4f}" if dev_acc is not None else ""
    log(f"finetune seed {seed}: test accuracy {acc:.4f}, macro-F1 {f1:.4f}{dev} ({budget})")
    if len(set(pred.tolist())) == 1 and len(result.labels) > 1:
        log(
            f"finetune: warning: seed {seed} predicts only {result.labels[int(pred[0])]!r} (the majority baseline is "
            f"{result.majority:.4f}): the LR ({result.lr:g}) may be too low or too high for this model, or the task "
            "needs more epochs"
        )
    if tracker is not None:
        tracker.log_metrics(
            {"finetune/accuracy": acc, "finetune/macro_f1": f1, "finetune/dev_accuracy": dev_acc or 0.0}, step=seed
        )


def _report_summary(result: FinetuneResult, seeds: int, log, tracker) -> None:
    spread = f" ± {result.std:.4f}" if seeds > 1 else ""
    log(
        f"finetune: accuracy {result.mean:.4f}{spread}, macro-F1 {statistics.mean(result.macro_f1):.4f} over "
        f"{seeds} seed{'s' if seeds > 1 else ''} (majority baseline {result.majority:.4f}; {result.seconds:.0f}s)"
    )
    if tracker is not None:
        tracker.log_metrics(
            {
                "finetune/accuracy_mean": result.mean,
                "finetune/accuracy_std": result.std,
                "finetune/macro_f1_mean": statistics.mean(result.macro_f1),
                "finetune/majority_baseline": result.majority,
            },
            step=seeds,
        )


def finetune(
    model_dir: str,
    train: str,
    test: str,
    tokenizer_dir: str | None = None,
    text_field: str = "text",
    label_field: str = "label",
    seeds: int = 3,
    epochs: int = 3,
    lr: float | None = None,
    layer_decay: float | None = None,
    batch_size: int = 32,
    max_len: int = 128,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    log=print,
    tracker=None,
    pair_field: str | None = None,
    dev_fraction: float = 0.1,
    out: str | Path | None = None,
    threads: int | None = None,
) -> FinetuneResult:
    from electra_dist.data.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    tower, hidden, tok_dir, model_cfg = load_encoder(model_dir)
    max_len = min(max_len, tower.embeddings.position_embeddings.num_embeddings)
    default_lr, default_decay = size_defaults(hidden)
    lr, layer_decay = lr or default_lr, layer_decay or default_decay
    log(
        f"finetune: hidden {hidden}: lr {lr:g}, layer decay {layer_decay:g}"
        + (" (the paper's for this size)" if (lr, layer_decay) == (default_lr, default_decay) else "")
    )
    tok_dir = tokenizer_dir or tok_dir
    if tok_dir is None:
        raise FileNotFoundError("--tokenizer: the model names no tokenizer; pass the directory it was trained with")
    tokenizer = load_tokenizer(tok_dir)
    names, (xtr, mtr, ttr, ytr), (xte, mte, tte, yte) = _task(
        tokenizer, train, test, text_field, label_field, pair_field, max_len
    )
    order = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(1234))
    n_dev = int(dev_fraction * len(ytr)) if len(ytr) >= 20 else 0
    dev, fit = order[:n_dev], order[n_dev:]
    majority = float((yte == torch.bincount(ytr[fit]).argmax()).float().mean())
    device = _device(threads, log)
    result = FinetuneResult([], 0.0, names, majority=majority, lr=lr, layer_decay=layer_decay)
    best, hp = None, dict(epochs=epochs, batch_size=batch_size, lr=lr, layer_decay=layer_decay, warmup=warmup)
    data = ((xtr, mtr, ttr, ytr), (xte, mte, tte, yte), dev, fit)
    for seed in range(seeds):
        model, dev_acc = _one_seed(model_dir, hidden, names, seed, data, result, hp | {"weight_decay": weight_decay},
                                   device, log, tracker)  # fmt: skip
        if best is None or dev_acc > best[0]:  # the best seed on dev is the one saved
            best, result.best_seed = (
                (dev_acc, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}),
                seed,
            )
    result.seconds = time.perf_counter() - t0
    _report_summary(result, seeds, log, tracker)
    if out is not None and best is not None:
        save_classifier(best[1], model_cfg, names, tok_dir, out)
        log(
            f"finetune: wrote seed {result.best_seed}'s model (best on dev) to {out} "
            "(transformers: AutoModelForSequenceClassification + AutoTokenizer)"
        )
    return result


def _one_seed(model_dir, hidden, names, seed, data, result, hp, device, log, tracker):
    """Fine-tune fresh weights with `seed` on the rows `fit` of `train`; score on `dev` and `test`; report."""
    train, test, dev, fit = data
    torch.manual_seed(seed)
    tower = load_encoder(model_dir)[0]  # fresh weights per seed
    model = Classifier(tower, hidden, len(names)).to(device)
    groups = layer_lr_groups(model, hp["lr"], hp["layer_decay"], hp["weight_decay"])
    opt = build_optimizer(groups, OptimConfig(lr=hp["lr"]), device)
    epochs, batch_size = hp["epochs"], hp["batch_size"]
    steps = epochs * math.ceil(len(fit) / batch_size)
    sched = lr_schedule(opt, max(1, int(hp["warmup"] * steps)), steps)
    _fit(model, opt, sched, fit, train, epochs, batch_size, seed, steps, device, log)
    (xtr, mtr, ttr, ytr), (xte, mte, tte, yte) = train, test
    dev_acc = (
        _accuracy(predict(model, xtr[dev], mtr[dev], ttr[dev], device, batch_size * 4), ytr[dev]) if len(dev) else 0.0
    )
    pred = predict(model, xte, mte, tte, device, batch_size * 4)
    acc, f1 = _accuracy(pred, yte), macro_f1(pred, yte, len(names))
    budget = f"{epochs} epochs, {steps} steps"
    _report_seed(result, seed, acc, f1, dev_acc if len(dev) else None, pred, budget, log, tracker)
    return model, dev_acc


def save_classifier(state: dict[str, torch.Tensor], model_cfg, names: list[str], tokenizer_dir, out) -> Path:
    """`out`: ElectraForSequenceClassification (config.json + model.safetensors) and its tokenizer."""
    from safetensors.torch import save_file

    from electra_dist.interop.hf import hf_config_dict, tower_to_hf
    from electra_dist.interop.hf_tokenizer import save_hf_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {
        k: v
        for k, v in tower_to_hf(state, "tower", model_cfg.discriminator, model_cfg.vocab_size).items()
        if k.startswith("electra.")
    }
    weights.update({f"classifier.{k}": state[k].contiguous() for k in state if k.startswith(("dense.", "out_proj."))})
    hf_cfg = hf_config_dict(
        model_cfg,
        model_cfg.discriminator,
        architectures=["ElectraForSequenceClassification"],
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        num_labels=len(names),
        summary_type="first",
    )
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    save_hf_tokenizer(tokenizer_dir, out, model_cfg.max_position_embeddings)
    return out


def macro_f1(pred: torch.Tensor, gold: torch.Tensor, num_labels: int) -> float:
    """The unweighted mean of each label's F1 (a label never predicted nor present scores 0)."""
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, labels=list(range(num_labels)), average="macro", zero_division=0.0))


def _accuracy(pred: torch.Tensor, gold: torch.Tensor) -> float:
    return float((pred == gold).float().mean()) if len(gold) else 0.0


def _trim(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor):
    n = int(mask.sum(1).max())
    return ids[:, :n], mask[:, :n], types[:, :n]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, device, batch: int) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        ids, mask, types = _trim(x[i : i + batch], m[i : i + batch], t[i : i + batch])
        out.append(model(ids.to(device), mask.to(device), types.to(device)).argmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
