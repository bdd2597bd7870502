"""Hugging Face interop: export to and import from `transformers`' ELECTRA.

Our names follow HF's ELECTRA, so conversion is a renaming plus two reshapes: our fused,
head-major QKV splits into HF's query/key/value, and the padded vocabulary is trimmed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from electra_dist.config import ConfigError, EncoderConfig, ModelConfig
from electra_dist.interop.weights import read_weights
from electra_dist.model import ElectraPretrainer
from electra_dist.model.electra import fit_vocab_rows

# our per-layer name → HF's, inside `encoder.layer.{i}.`
_LAYER_NAMES = {
    "attention.dense": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_norm": "output.LayerNorm",
}


# ---- Hugging Face: configs ----------------------------------------------------------------


def hf_config_dict(cfg: ModelConfig, enc: EncoderConfig, **extra: Any) -> dict[str, Any]:
    return {
        "model_type": "electra",
        "vocab_size": cfg.vocab_size,
        "embedding_size": cfg.embedding_size,
        "hidden_size": enc.hidden_size,
        "num_hidden_layers": enc.num_layers,
        "num_attention_heads": enc.num_heads,
        "intermediate_size": enc.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "position_embedding_type": "absolute",
        **extra,
    }


def model_config_from_hf(disc: dict[str, Any], gen: dict[str, Any] | None = None) -> ModelConfig:
    """Our ModelConfig from HF config dicts (the generator defaults to the discriminator's shape)."""
    if disc.get("hidden_act", "gelu") not in ("gelu", "gelu_python"):
        raise ConfigError([f"hidden_act: {disc.get('hidden_act')!r} is not supported (only exact gelu)"])
    if disc.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError([f"position_embedding_type: {disc['position_embedding_type']!r} is not supported"])

    def enc(c: dict) -> EncoderConfig:
        return EncoderConfig(c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["intermediate_size"])

    return ModelConfig(
        vocab_size=disc["vocab_size"],
        embedding_size=disc.get("embedding_size", disc["hidden_size"]),
        max_position_embeddings=disc["max_position_embeddings"],
        type_vocab_size=disc["type_vocab_size"],
        dropout=disc.get("hidden_dropout_prob", 0.1),
        attention_dropout=disc.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=disc.get("layer_norm_eps", 1e-12),
        initializer_range=disc.get("initializer_range", 0.02),
        discriminator=enc(disc),
        generator=enc(gen if gen is not None else disc),
    )


# ---- Hugging Face: weights ----------------------------------------------------------------


def tower_to_hf(
    state: dict[str, torch.Tensor], tower: str, enc: EncoderConfig, vocab_size: int
) -> dict[str, torch.Tensor]:
    """Our `{tower}.*` weights → HF `electra.*` (+ head) names for one tower."""
    out: dict[str, torch.Tensor] = {}
    H, nh = enc.hidden_size, enc.num_heads
    prefix = f"{tower}."
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name == "embeddings.word_embeddings.weight":
            out["electra." + name] = value[:vocab_size]
        elif name.startswith(("embeddings.", "embeddings_project.")):
            out["electra." + name] = value
        elif name.startswith(("discriminator_predictions.", "generator_predictions.")):
            out[name] = value
        elif name == "generator_lm_head_bias":
            out["generator_lm_head.bias"] = value[:vocab_size]
            out["generator_lm_head.weight"] = state[f"{tower}.embeddings.word_embeddings.weight"][:vocab_size]
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name):
            i, sub, kind = m.groups()
            base = f"electra.encoder.layer.{i}."
            if sub == "attention.qkv":
                per_head = value.view(nh, 3, H // nh, *value.shape[1:])  # (heads, q/k/v, head_dim, [in])
                for j, qkv in enumerate(("query", "key", "value")):
                    out[f"{base}attention.self.{qkv}.{kind}"] = per_head[:, j].reshape(H, *value.shape[1:])
            else:
                out[f"{base}{_LAYER_NAMES[sub]}.{kind}"] = value
        else:
            raise KeyError(f"no Hugging Face name for weight {key!r}")
    return {k: v.contiguous().clone() for k, v in out.items()}


def tower_from_hf(
    hf: dict[str, torch.Tensor], tower: str, enc: EncoderConfig, padded_vocab: int
) -> dict[str, torch.Tensor]:
    """HF ELECTRA or BERT weights (with or without the `electra.`/`bert.` prefix) → our `{tower}.*` names.
    BERT's heads (`cls.*`: its MLM and next-sentence heads) and pooler have no ELECTRA counterpart."""
    reverse = {v: k for k, v in _LAYER_NAMES.items()}
    H, nh = enc.hidden_size, enc.num_heads
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        name = key.split(".", 1)[1] if key.startswith(("electra.", "bert.")) else key
        if name.startswith(("embeddings.position_ids", "embeddings.token_type_ids")) or key.startswith("cls."):
            continue  # HF buffers; BERT's pre-training heads
        if name == "embeddings.word_embeddings.weight":
            out[f"{tower}.{name}"] = fit_vocab_rows(value, (padded_vocab, *value.shape[1:]))
        elif name.startswith(
            ("embeddings.", "embeddings_project.", "discriminator_predictions.", "generator_predictions.")
        ):
            out[f"{tower}.{name}"] = value
        elif name == "generator_lm_head.bias":
            out[f"{tower}.generator_lm_head_bias"] = fit_vocab_rows(value, (padded_vocab, *value.shape[1:]))
        elif name == "generator_lm_head.weight":
            continue  # tied to the word embeddings
        elif m := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", name):
            i, sub, kind = m.groups()
            if sub.startswith("attention.self."):
                qkv.setdefault((i, kind), {})[sub.rsplit(".", 1)[1]] = value
            elif sub in reverse:
                out[f"{tower}.encoder.layers.{i}.{reverse[sub]}.{kind}"] = value
            else:
                raise KeyError(f"unexpected Hugging Face weight {key!r}")
        elif name.startswith("pooler."):
            continue  # BERT checkpoints carry a pooler ELECTRA has no use for
        else:
            raise KeyError(f"unexpected Hugging Face weight {key!r}")
    for (i, kind), parts in qkv.items():
        stacked = torch.stack(
            [parts[n].view(nh, H // nh, *parts[n].shape[1:]) for n in ("query", "key", "value")], dim=1
        )
        out[f"{tower}.encoder.layers.{i}.attention.qkv.{kind}"] = stacked.reshape(3 * H, *parts["query"].shape[1:])
    return out


def to_hf(model: ElectraPretrainer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(discriminator, generator) state dicts in transformers' ELECTRA names. With GDES the discriminator's
    embeddings are the sums it computes with (shared + Δ), the generator's the shared tables."""
    state = model.state_dict()
    cfg = model.cfg
    if model.discriminator is not None and model.discriminator.embeddings_delta is not None:
        merged = model.discriminator.embeddings_delta.merged(model.embeddings)
        state = {k: v for k, v in state.items() if not k.startswith("discriminator.embeddings_delta.")}
        state.update({f"discriminator.embeddings.{name}": t.detach() for name, t in merged.items()})
    if model.discriminator is None:  # MLM baseline: its one encoder has the discriminator's shape
        return {}, tower_to_hf(state, "generator", cfg.discriminator, cfg.vocab_size)
    disc = tower_to_hf(state, "discriminator", cfg.discriminator, cfg.vocab_size)
    if model.generator is None:  # objective.generator=frozen: its masked LM, where one is attached, in its own shape
        frozen = model.frozen_generator
        if frozen is None:
            return disc, {}
        gen_state = {"generator." + k: v for k, v in frozen.state_dict().items()}
        return disc, tower_to_hf(gen_state, "generator", frozen.cfg.generator, frozen.cfg.vocab_size)
    return disc, tower_to_hf(state, "generator", cfg.generator, cfg.vocab_size)


def _our_state(
    cfg: ModelConfig,
    discriminator: dict[str, torch.Tensor],
    generator: dict[str, torch.Tensor] | None,
    padded_vocab: int,
) -> dict[str, torch.Tensor]:
    """HF weights → our names; the generator's embeddings are the shared ones (the discriminator's), which
    appear under both towers in our state dict."""
    state = tower_from_hf(discriminator, "discriminator", cfg.discriminator, padded_vocab)
    if generator is not None:
        gen = tower_from_hf(generator, "generator", cfg.generator, padded_vocab)
        state.update({k: v for k, v in gen.items() if not k.startswith("generator.embeddings.")})
    for k in [k for k in state if k.startswith("discriminator.embeddings.")]:
        state["generator" + k[len("discriminator") :]] = state[k]
    return state


def _load(model: ElectraPretrainer, state: dict[str, torch.Tensor], strict: bool) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or (strict and missing):
        raise KeyError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")


def load_hf_weights(
    model: ElectraPretrainer,
    discriminator: dict[str, torch.Tensor],
    generator: dict[str, torch.Tensor] | None = None,
    strict: bool = True,
) -> None:
    """Load HF ELECTRA weights into our model. The generator's embeddings are the shared ones."""
    _load(model, _our_state(model.cfg, discriminator, generator, model.padded_vocab), strict)


# ---- export / import directories --------------------------------------------------------


def export_hf(model: ElectraPretrainer, out: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Write `out/discriminator` and `out/generator`, each loadable with transformers' from_pretrained (with
    the tokenizer, if given, as tokenizer.json that AutoTokenizer loads and that gives our ids)."""
    from safetensors.torch import save_file

    out = Path(out)
    cfg = model.cfg
    if cfg.architecture == "modern":  # transformers' ModernBERT classes
        from electra_dist.interop.modernbert import export_modern

        for d in export_modern(model, out):
            _write_tokenizer(d, tokenizer_dir, cfg.max_position_embeddings)
        return out
    disc, gen = to_hf(model)
    gen.pop("generator_lm_head.weight", None)  # tied: transformers re-ties it to the word embeddings
    gen_cfg, gen_shape = cfg, cfg.discriminator if model.discriminator is None else cfg.generator
    if model.generator is None and model.frozen_generator is not None:  # a frozen one: its own widths
        gen_cfg, gen_shape = model.frozen_generator.cfg, model.frozen_generator.cfg.generator
    for name, weights, shape, enc, arch in (
        ("discriminator", disc, cfg, cfg.discriminator, "ElectraForPreTraining"),
        ("generator", gen, gen_cfg, gen_shape, "ElectraForMaskedLM"),
    ):
        if not weights:
            continue
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        hf_cfg = hf_config_dict(shape, enc, architectures=[arch], tie_word_embeddings=True)
        (d / "config.json").write_text(json.dumps(hf_cfg, indent=2))
        save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})
        _write_tokenizer(d, tokenizer_dir, cfg.max_position_embeddings)
    return out


def _write_tokenizer(d: Path, tokenizer_dir: str | Path | None, max_length: int) -> None:
    """The tokenizer's files beside a model directory, and tokenizer.json that AutoTokenizer loads."""
    if not tokenizer_dir:
        return
    from electra_dist.data.hf_vocab import is_hf_tokenizer_dir
    from electra_dist.data.tokenizer import tokenizer_files

    for f in tokenizer_files(tokenizer_dir):
        shutil.copy2(f, d / f.name)
    if not is_hf_tokenizer_dir(tokenizer_dir):  # a published model's files already are what it loads
        from electra_dist.interop.hf_tokenizer import save_hf_tokenizer

        save_hf_tokenizer(tokenizer_dir, d, max_length)


def hf_state(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], bool]:
    """What an HF directory (`path/discriminator` (+ `path/generator`), or one ELECTRA/BERT model dir) holds,
    in our names: (its shape, the weights it PROVIDES — a BERT has no RTD head —, whether it has a generator)."""
    path = Path(path)
    disc_dir = path / "discriminator" if (path / "discriminator").is_dir() else path
    gen_dir = path / "generator" if (path / "generator").is_dir() else None
    disc_cfg = json.loads((disc_dir / "config.json").read_text())
    if disc_cfg.get("model_type") == "modernbert":  # its encoder (and our RTD head, from our export)
        from electra_dist.interop.modernbert import modern_state

        return (*modern_state(disc_dir), False)
    gen_cfg = json.loads((gen_dir / "config.json").read_text()) if gen_dir else None
    cfg = model_config_from_hf(disc_cfg, gen_cfg)
    state = _our_state(
        cfg, read_weights(disc_dir), read_weights(gen_dir) if gen_dir else None, cfg.padded_vocab_size(1)
    )
    return cfg, state, gen_dir is not None


def import_hf(path: str | Path) -> ElectraPretrainer:
    """Our pretrainer from an HF export: `path/discriminator` (+ `path/generator`), or one model dir."""
    cfg, state, has_generator = hf_state(path)
    model = ElectraPretrainer(cfg)
    _load(model, state, strict=has_generator)
    return model
