"""A masked LM to corrupt with (objective.generator=frozen, model.generator_from=PATH), read into our
generator's names and shape.

PATH is a Hugging Face `*ForMaskedLM` directory — BERT (`cls.predictions.*`), ELECTRA's generator
(`generator_predictions.*`; our export's generator/, or the export's root), RoBERTa-style (`lm_head.*`,
positions offset past its padding id) — or one of our runs: an MLM-objective run (its one encoder with
its MLM head) or an ELECTRA run (its generator). All three heads are the same function — dense → GeLU →
LayerNorm → logits over the tied word embeddings + a bias — so each maps onto ElectraGenerator's
`generator_predictions` and `generator_lm_head_bias` exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from electra_dist.config import ConfigError, ModelConfig

_ROBERTA_STYLE = ("roberta", "xlm-roberta", "camembert")


@dataclass
class MlmSource:
    path: str
    kind: str  # "huggingface" or "checkpoint"
    cfg: ModelConfig  # its shape: `generator` is its encoder (`discriminator` the same)
    state: dict[str, torch.Tensor]  # full (TP=1) tensors by ElectraGenerator's own parameter names
    checksum: str  # of the weights as read: a resume checks that the generator is still the same


def read_mlm(path: str | Path) -> MlmSource:
    """The masked LM at `path` (see the module doc), or FileNotFoundError / ConfigError naming what is missing."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model.generator_from: {p} does not exist")
    if (hf_dir := _hf_dir(p)) is not None:
        cfg, state = _read_hf(hf_dir)
        kind = "huggingface"
    else:
        cfg, state = _read_ours(p)
        kind = "checkpoint"
    return MlmSource(str(p), kind, cfg, state, checksum(state))


def mlm_shape(path: str | Path) -> ModelConfig:
    """The shape of the masked LM at `path`, from its config files where they tell it (no weights read)."""
    hf_dir = _hf_dir(Path(path))
    return _hf_shape(hf_dir)[0] if hf_dir is not None else read_mlm(path).cfg


def _hf_dir(p: Path) -> Path | None:
    """The Hugging Face model directory at `p` (our export's root: its generator/), or None."""
    hf_dir = p / "generator" if (p / "generator" / "config.json").is_file() else p
    return hf_dir if (hf_dir / "config.json").is_file() else None


def _hf_shape(directory: Path) -> tuple[ModelConfig, str, int]:
    """(its shape, its model_type, the position offset: RoBERTa-style tables start past the padding id)."""
    from electra_dist.interop.hf import model_config_from_hf

    config = json.loads((directory / "config.json").read_text())
    model_type = config.get("model_type", "")
    if model_type == "modernbert":
        from electra_dist.interop.modernbert import model_config_from_modern

        return model_config_from_modern(directory), model_type, 0
    cfg, offset = model_config_from_hf(config), 0
    if model_type in _ROBERTA_STYLE:
        offset = int(config.get("pad_token_id", 1)) + 1
        cfg = dataclasses.replace(cfg, max_position_embeddings=cfg.max_position_embeddings - offset)
    return cfg, model_type, offset


def checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of `state` (however the files store them)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _read_hf(directory: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from electra_dist.interop.hf import tower_from_hf
    from electra_dist.interop.weights import read_weights

    cfg, model_type, offset = _hf_shape(directory)
    if model_type == "modernbert":  # ModernBertForMaskedLM: head.dense/norm, decoder.bias onto the generator head
        from electra_dist.interop.modernbert import modern_state

        cfg, ours = modern_state(directory, "generator")
        if not any(k.endswith("generator_lm_head_bias") for k in ours):
            raise ConfigError([f"model.generator_from: {directory} holds no masked-LM head (a ModernBertModel)"])
        return cfg, {k[len("generator.") :]: v for k, v in ours.items()}
    hf = _mlm_head_names(read_weights(directory), directory)
    if offset:  # row pad+1 is position 0
        for k in [k for k in hf if k.endswith("embeddings.position_embeddings.weight")]:
            hf[k] = hf[k][offset:]
    hf = {(k.split(".", 1)[1] if k.startswith(tuple(f"{t}." for t in _ROBERTA_STYLE)) else k): v for k, v in hf.items()}
    ours = tower_from_hf(hf, "generator", cfg.generator, cfg.padded_vocab_size(1))
    return cfg, {k[len("generator.") :]: v for k, v in ours.items()}


def _mlm_head_names(hf: dict[str, torch.Tensor], directory: Path) -> dict[str, torch.Tensor]:
    """BERT's and RoBERTa's MLM heads under ELECTRA's generator names; their decoder weight must be the word
    embeddings (tied, as all three train them); next-sentence heads and poolers dropped."""
    renames = {
        "cls.predictions.transform.dense.": "generator_predictions.dense.",
        "cls.predictions.transform.LayerNorm.": "generator_predictions.LayerNorm.",
        "lm_head.dense.": "generator_predictions.dense.",
        "lm_head.layer_norm.": "generator_predictions.LayerNorm.",
    }
    biases = ("cls.predictions.bias", "cls.predictions.decoder.bias", "lm_head.bias", "lm_head.decoder.bias")
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        if key.startswith(("cls.seq_relationship.", "bert.pooler.", "roberta.pooler.")):
            continue
        if key in biases:
            out["generator_lm_head.bias"] = value
        elif key.endswith(("predictions.decoder.weight", "lm_head.decoder.weight", "generator_lm_head.weight")):
            words = [v for k, v in hf.items() if k.endswith("embeddings.word_embeddings.weight")]
            if words and not torch.equal(value, words[0]):
                raise ConfigError(
                    [f"model.generator_from: {directory}: the MLM decoder ({key}) is not tied to the word embeddings"]
                )
        else:
            prefix = next((p for p in renames if key.startswith(p)), None)
            out[renames[prefix] + key[len(prefix) :] if prefix else key] = value
    if "generator_lm_head.bias" not in out or not any(k.startswith("generator_predictions.") for k in out):
        raise ConfigError(
            [
                f"model.generator_from: {directory} holds no masked-LM head (cls.predictions.*, lm_head.* or "
                "generator_predictions.*): a *ForMaskedLM directory is needed"
            ]
        )
    return out


def _read_ours(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from electra_dist.interop.model_dir import load_model

    try:
        model, _ = load_model(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"model.generator_from: {path} is neither a Hugging Face *ForMaskedLM directory (config.json) nor "
            f"one of our runs: {e}"
        ) from None
    if model.generator is None:
        raise ConfigError([f"model.generator_from: {path} has no generator (it was trained with a frozen one)"])
    cfg = model.cfg
    if model.discriminator is None:  # the MLM objective: one encoder of the discriminator's shape
        cfg = dataclasses.replace(cfg, generator=cfg.discriminator)
    state = {k[len("generator.") :]: v for k, v in model.state_dict().items() if k.startswith("generator.")}
    return dataclasses.replace(cfg, discriminator=cfg.generator), state
