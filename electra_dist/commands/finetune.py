"""`electra-dist finetune`: sequence classification from a pre-trained checkpoint, over several seeds.

The encoder is the one pre-training keeps (ELECTRA's discriminator, or the MLM baseline's
encoder), from our checkpoint or a Hugging Face export. Head: [CLS] → dense → gelu → dropout →
linear (as ElectraClassificationHead). Layer-wise LR decay done right: the head gets lr, the top
encoder layer lr·d, layer i (1-based) lr·d^(L+1-i), the embeddings lr·d^(L+1). (The official code
gives the head depth L+2, so its top layer gets lr·d² and every layer one power too many.)
AdamW and the schedule of pre-training (electra_dist.training.optim: linear decay × 10 % warm-up,
as the official fine-tuning), accuracy on the test set, mean ± std over seeds.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
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

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.tower.encode(ids, mask)[:, 0]  # [CLS]
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
    return [{"params": ps, "lr": lr * scale, "lr_scale": scale, "weight_decay": weight_decay if matrix else 0.0}
            for (scale, matrix), ps in sorted(groups.items(), key=lambda kv: kv[0][0])]


def load_encoder(model_dir: str | Path) -> tuple[nn.Module, int, Path | None]:
    """(tower, hidden size, tokenizer dir) from our checkpoint dir or an HF export."""
    from electra_dist.interop import CONFIG_FILE, import_hf, load_model

    path = Path(model_dir)
    if (path / CONFIG_FILE).is_file():
        model, cfg = load_model(path)
        tok = Path(cfg.data.tokenizer) if cfg.data.tokenizer else None
    elif (path / "config.json").is_file() or (path / "discriminator").is_dir():
        model = import_hf(path)
        d = path / "discriminator" if (path / "discriminator").is_dir() else path
        tok = d if (d / "spm.model").is_file() else None
    else:
        raise FileNotFoundError(f"--model: {path} is neither our checkpoint (config.yaml + model.pt) nor a "
                                "Hugging Face ELECTRA export (config.json)")
    return model.encoder_tower, model.cfg.discriminator.hidden_size, tok


def read_labeled(path: str | Path, text_field: str, label_field: str) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        if text_field not in obj or label_field not in obj:
            raise ValueError(f"{path}:{n}: needs fields {text_field!r} and {label_field!r}; has {sorted(obj)}")
        texts.append(str(obj[text_field]))
        labels.append(str(obj[label_field]))
    if not texts:
        raise ValueError(f"{path}: no examples")
    return texts, labels


def encode(tokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    sp = tokenizer.special
    rows = [[sp.cls] + ids[: max_len - 2] + [sp.sep] for ids in tokenizer.encode_batch(texts)]
    S = max(len(r) for r in rows)
    ids = torch.full((len(rows), S), sp.pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, (ids != sp.pad).long()


def finetune(model_dir: str, train: str, test: str, tokenizer_dir: str | None = None, text_field: str = "text",
             label_field: str = "label", seeds: int = 3, epochs: int = 3, lr: float = 1e-4, layer_decay: float = 0.8,
             batch_size: int = 32, max_len: int = 128, weight_decay: float = 0.01, warmup: float = 0.1,
             log=print, tracker=None) -> FinetuneResult:
    from electra_dist.data.tokenizer import Tokenizer

    t0 = time.perf_counter()
    tower, hidden, tok_dir = load_encoder(model_dir)
    max_len = min(max_len, tower.embeddings.position_embeddings.num_embeddings)
    tok_dir = tokenizer_dir or tok_dir
    if tok_dir is None:
        raise FileNotFoundError("--tokenizer: the model names no tokenizer; pass the directory it was trained with")
    tokenizer = Tokenizer(tok_dir)
    tr_text, tr_lab = read_labeled(train, text_field, label_field)
    te_text, te_lab = read_labeled(test, text_field, label_field)
    names = sorted(set(tr_lab))
    unknown = sorted(set(te_lab) - set(names))
    if unknown:
        raise ValueError(f"{test}: labels {unknown} do not occur in {train}")
    index = {n: i for i, n in enumerate(names)}
    xtr, mtr = encode(tokenizer, tr_text, max_len)
    xte, mte = encode(tokenizer, te_text, max_len)
    ytr = torch.tensor([index[x] for x in tr_lab])
    yte = torch.tensor([index[x] for x in te_lab])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        tower, hidden, _ = load_encoder(model_dir)  # fresh weights per seed
        model = Classifier(tower, hidden, len(names)).to(device)
        opt = build_optimizer(layer_lr_groups(model, lr, layer_decay, weight_decay), OptimConfig(lr=lr), device)
        steps = epochs * math.ceil(len(ytr) / batch_size)
        sched = lr_schedule(opt, max(1, int(warmup * steps)), steps)
        g = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(ytr), generator=g)
            for i in range(0, len(order), batch_size):
                b = order[i:i + batch_size]
                ids, mask = _trim(xtr[b], mtr[b])
                loss = F.cross_entropy(model(ids.to(device), mask.to(device)), ytr[b].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
        acc = evaluate(model, xte, mte, yte, device, batch_size * 4)
        accs.append(acc)
        log(f"finetune seed {seed}: test accuracy {acc:.4f} ({epochs} epochs, {steps} steps)")
        if tracker is not None:
            tracker.log_metrics({"finetune/accuracy": acc}, step=seed)
    result = FinetuneResult(accs, time.perf_counter() - t0, names)
    log(f"finetune: accuracy {result.mean:.4f} ± {result.std:.4f} over {seeds} seeds ({result.seconds:.0f}s)")
    if tracker is not None:
        tracker.log_metrics({"finetune/accuracy_mean": result.mean, "finetune/accuracy_std": result.std},
                            step=seeds)
    return result


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(mask.sum(1).max())
    return ids[:, :n], mask[:, :n]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, device, batch: int) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        ids, mask = _trim(x[i:i + batch], m[i:i + batch])
        correct += int((model(ids.to(device), mask.to(device)).argmax(-1).cpu() == y[i:i + batch]).sum())
    return correct / len(y)
