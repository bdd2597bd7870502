"""`train --init-from PATH` (train.init_from): continue pre-training from published or earlier weights.

PATH is our model directory (a run's final/: config.yaml + model.pt), any training checkpoint (or a run's
output directory), or a Hugging Face ELECTRA or BERT directory (config.json + weights, or our export's
discriminator/ + generator/). The discriminator comes from it — BERT-family encoders included; their
pre-training heads are dropped and the RTD head starts fresh. The generator comes from it too when PATH
has one; otherwise it is a fresh generator of the configured size over the discriminator's embeddings
(tied as usual, or GDES) — with objective.generator=frozen there is none to train: model.generator_from
corrupts (a BERT's MLM head included: interop/mlm.py). The model's shape (vocabulary, widths, depths,
positions) is the weights': the config is set to it, and a shape key given on the command line that
contradicts them is an error naming both values. The optimizer and LR schedule start fresh (warm-up
included). A resume from the run's own checkpoint wins over PATH.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from electra_dist import parallel
from electra_dist.config import Config, ConfigError, ModelConfig

log = logging.getLogger(__name__)

SHAPE_KEYS = ("vocab_size", "embedding_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
              "architecture", "global_every", "local_window", "rope_theta_global", "rope_theta_local")  # fmt: skip
ENCODER_KEYS = ("num_layers", "hidden_size", "num_heads", "intermediate_size")
_HEADS = ("generator.generator_predictions.", "generator.generator_lm_head_bias")


@dataclass
class InitSource:
    path: str
    kind: str  # "checkpoint" or "huggingface"
    model: ModelConfig  # the weights' shape
    has_generator: bool
    state: dict[str, torch.Tensor]  # our TP=1 names


def read_source(path: str | Path) -> InitSource:
    from electra_dist.interop import load_model
    from electra_dist.interop.hf import hf_state

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"train.init_from: {p} does not exist")
    if (p / "config.json").is_file() or (p / "discriminator" / "config.json").is_file():
        shape, state, has_generator = hf_state(p)  # only what the directory holds: no stand-in weights
        if not has_generator:
            state = {k: v for k, v in state.items() if not k.startswith("generator.")}
        return InitSource(str(p), "huggingface", shape, has_generator, state)
    try:
        model, _ = load_model(p)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"train.init_from: {p} is neither our checkpoint (final/, a training checkpoint "
            f"or a run's output directory) nor a Hugging Face directory (config.json): {e}"
        ) from None
    has_generator = model.discriminator is not None and model.generator is not None  # a frozen-generator run has none
    state = model.state_dict()
    if model.discriminator is None:  # an MLM run: its one encoder becomes the discriminator
        state = {
            "discriminator." + k[len("generator.") :]: v
            for k, v in state.items()
            if k.startswith("generator.") and not k.startswith(_HEADS)
        }
    return InitSource(str(p), "checkpoint", model.cfg, has_generator, state)


def apply_shape(cfg: Config, src: InitSource, explicit: set[str]) -> list[str]:
    """Set cfg.model's shape to the weights'; ConfigError for an explicit key that says otherwise.
    Returns what changed, for the log."""
    m, w = cfg.model, src.model
    pairs = [(f"model.{k}", m, k, getattr(w, k)) for k in SHAPE_KEYS]
    pairs += [(f"model.discriminator.{k}", m.discriminator, k, getattr(w.discriminator, k)) for k in ENCODER_KEYS]
    if src.has_generator and cfg.objective.generator == "joint":  # a frozen one's shape is model.generator_from's
        pairs += [(f"model.generator.{k}", m.generator, k, getattr(w.generator, k)) for k in ENCODER_KEYS]
    problems = [
        f"{key}={getattr(obj, k)} contradicts the weights in train.init_from={src.path} ({value}): drop it, "
        f"the shape is the weights'"
        for key, obj, k, value in pairs
        if key in explicit and getattr(obj, k) != value
    ]
    if problems:
        raise ConfigError(problems)
    changed = []
    for key, obj, k, value in pairs:
        if getattr(obj, k) != value:
            changed.append(f"{key} {getattr(obj, k)} → {value}")
            setattr(obj, k, value)
    return changed


def initial_weights(model, src: InitSource) -> dict[str, torch.Tensor]:
    """The full (TP=1) tensors to copy into `model`, by its parameter names; the rest keep their fresh init."""
    targets = dict(model.named_parameters(remove_duplicate=False))
    mlm = model.discriminator is None
    state = dict(src.state)
    deltas = [k for k in state if ".embeddings_delta." in k]
    if deltas and not any(".embeddings_delta." in n for n in targets):  # GDES weights into a tied model:
        for k in deltas:  # the one table is the discriminator's sum (the model we keep)
            name = k.split(".embeddings_delta.")[1].replace("__", ".")
            merged = state[f"discriminator.embeddings.{name}"] + state.pop(k)
            state[f"discriminator.embeddings.{name}"] = state[f"generator.embeddings.{name}"] = merged
        log.info(f"{src.path} shares embeddings by GDES: the tied table starts as the discriminator's sum")
    out = {}
    for name, t in state.items():
        if mlm:  # the MLM objective's one encoder is `generator.*`: the discriminator's encoder, a fresh MLM head
            if not name.startswith("discriminator.") or name.startswith("discriminator.discriminator_predictions."):
                continue
            name = "generator." + name[len("discriminator.") :]
        if name in targets:
            out[name] = _fit_rows(t, parallel.full_shape(targets[name], model.factory.tp_size), name)
    if not mlm and not src.has_generator and model.generator is not None:  # a fresh one over the discriminator's
        for name in [n for n in out if n.startswith("discriminator.embeddings.")]:
            out["generator" + name[len("discriminator") :]] = out[name]
    fresh = sorted({n.split(".")[0] + "." + n.split(".")[1] for n in targets if n not in out})
    log.info(
        f"init from {src.path} ({src.kind}): {len(out)} of {len(targets)} weights"
        + (f"; fresh: {', '.join(fresh)}" if fresh else "")
    )
    return out


def _fit_rows(t: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    from electra_dist.model.electra import fit_vocab_rows

    t = fit_vocab_rows(t, shape) if "word_embeddings" in name or "lm_head_bias" in name else t
    if t.shape != shape:
        raise ConfigError([f"train.init_from: weight {name} has shape {tuple(t.shape)}, the model {tuple(shape)}"])
    return t
