"""What fine-tuning starts from: a transformers directory for the Auto classes, and its tokenizer.

`--model` is our checkpoint (RUN/final or any training checkpoint: exported on the fly, GDES folded), our
export (its discriminator/, or generator/ for the MLM objective's encoder), or any Hugging Face ELECTRA/BERT
directory. The layer-wise LR decay of the paper is parameter groups over transformers' names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn


def size_defaults(hidden: int) -> tuple[float, float]:
    """(LR, layer decay) of the paper's fine-tuning by model size: Small, Base, Large."""
    return (3e-4, 0.8) if hidden <= 256 else (1e-4, 0.8) if hidden <= 768 else (5e-5, 0.9)


def hf_directory(model: str | Path, work: Path, tokenizer_dir: str | Path | None = None) -> Path:
    """A directory transformers' Auto classes load: `model` itself, its export's encoder, or `model` (our
    checkpoint) exported into `work`."""
    path = Path(model)
    for d in (path, path / "discriminator", path / "generator"):
        if (d / "config.json").is_file():
            return d
    from electra_dist.interop import export_hf, load_model

    try:
        ours, cfg = load_model(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"--model: {path} is neither our checkpoint (final/ or a training checkpoint) nor a Hugging Face "
            f"directory (config.json): {e}"
        ) from None
    tok = tokenizer_dir or cfg.data.tokenizer or None
    export_hf(ours, work / "export", tok if tok and Path(tok).is_dir() else None)
    return work / "export" / ("discriminator" if ours.discriminator is not None else "generator")


def load_tokenizer(hf_dir: Path, tokenizer_dir: str | Path | None = None):
    """The directory's own tokenizer; else `tokenizer_dir`: ours (SentencePiece, as a fast tokenizer that gives
    our ids) or a published model's."""
    from transformers import AutoTokenizer

    from electra_dist.data.hf_vocab import is_hf_tokenizer_dir

    if tokenizer_dir is None and ((hf_dir / "tokenizer.json").is_file() or (hf_dir / "vocab.txt").is_file()):
        return AutoTokenizer.from_pretrained(str(hf_dir))
    if tokenizer_dir is None:
        raise FileNotFoundError(f"--tokenizer: {hf_dir} holds no tokenizer; pass the directory it was trained with")
    if is_hf_tokenizer_dir(tokenizer_dir):
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    from electra_dist.interop.hf_tokenizer import hf_tokenizer

    return hf_tokenizer(tokenizer_dir)


def layer_lr_groups(model: nn.Module, lr: float, decay: float, weight_decay: float) -> list[dict[str, Any]]:
    """Layer-wise LR decay done right: the task head gets `lr`, encoder layer i (1-based) of L gets
    lr·decay^(L+1-i), the embeddings (and their projection) lr·decay^(L+1). (The official code gives the head
    depth L+2, so every layer gets one power too many.) No weight decay on 1-D parameters (LayerNorm, biases).
    BERT-style names (`electra.encoder.layer.i`) and ModernBERT's (`model.layers.i`; its final norm is the
    top layer's)."""
    base = getattr(model, "base_model_prefix", "electra")
    L = model.config.num_hidden_layers
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        layer = re.match(rf"{re.escape(base)}\.(?:encoder\.layer|layers)\.(\d+)\.", name)
        if layer:
            depth = int(layer.group(1)) + 1
        elif name.startswith(f"{base}.embeddings"):
            depth = 0
        elif name.startswith(f"{base}.final_norm"):
            depth = L
        else:
            depth = L + 1  # the task head (and a pooler, where the model has one)
        groups.setdefault((decay ** (L + 1 - depth), p.ndim > 1), []).append(p)
    return [
        {"params": ps, "lr": lr * scale, "lr_scale": scale, "weight_decay": weight_decay if matrix else 0.0}
        for (scale, matrix), ps in sorted(groups.items(), key=lambda kv: kv[0][0])
    ]
