"""model.architecture=modern ⟷ transformers' ModernBERT: the discriminator's encoder is a
`ModernBertModel` (its RTD head, which ModernBERT has no class for, in `rtd_head.safetensors` beside it).

Names map one to one; two layouts differ: our fused QKV is head-major (heads, 3, head_dim) and
transformers' [q; k; v]; our GeGLU input is feature-major (ffn, 2) and transformers' [value; gate].
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from electra_dist.config import ConfigError, EncoderConfig, ModelConfig
from electra_dist.model.electra import fit_vocab_rows

log = logging.getLogger(__name__)

_NAMES = {  # ours inside `encoder.layers.{i}.` → transformers' inside `layers.{i}.`
    "attention_norm.weight": "attn_norm.weight",
    "attention.qkv.weight": "attn.Wqkv.weight",
    "attention.dense.weight": "attn.Wo.weight",
    "mlp_norm.weight": "mlp_norm.weight",
    "mlp_in.weight": "mlp.Wi.weight",
    "mlp_out.weight": "mlp.Wo.weight",
}


def modern_config_dict(cfg: ModelConfig, enc: EncoderConfig, pad_id: int = 0, **extra: Any) -> dict[str, Any]:
    """transformers' ModernBertConfig for one of our modern towers."""
    if cfg.embedding_size != enc.hidden_size:
        raise ConfigError(
            [
                f"model.embedding_size={cfg.embedding_size}: ModernBERT has no embedding projection; export needs "
                f"it equal to the tower's hidden size ({enc.hidden_size})"
            ]  # fmt: skip
        )
    kinds = ["full_attention" if i % cfg.global_every == 0 else "sliding_attention" for i in range(enc.num_layers)]
    return {
        "model_type": "modernbert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": enc.hidden_size,
        "intermediate_size": enc.intermediate_size,
        "num_hidden_layers": enc.num_layers,
        "num_attention_heads": enc.num_heads,
        "hidden_activation": "gelu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "initializer_range": cfg.initializer_range,
        "norm_eps": cfg.layer_norm_eps,
        "norm_bias": False,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": cfg.attention_dropout,
        "embedding_dropout": cfg.dropout,
        "mlp_dropout": cfg.dropout,
        "local_attention": cfg.local_window,
        "layer_types": kinds,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta_global},
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta_local},
        },
        "pad_token_id": pad_id,
        "tie_word_embeddings": True,
        **extra,
    }


def modern_to_hf(state: dict[str, torch.Tensor], tower: str, cfg: ModelConfig, enc: EncoderConfig) -> dict:
    """Our `{tower}.*` encoder weights → ModernBertModel's names (the RTD / MLM heads are not among them)."""
    H, nh, F = enc.hidden_size, enc.num_heads, enc.intermediate_size
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(f"{tower}."):
            continue
        name = key[len(tower) + 1 :]
        if name == "embeddings.word_embeddings.weight":
            out["embeddings.tok_embeddings.weight"] = value[: cfg.vocab_size]
        elif name == "embeddings.LayerNorm.weight":
            out["embeddings.norm.weight"] = value
        elif name == "encoder.final_norm.weight":
            out["final_norm.weight"] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", name):
            i, sub = m.groups()
            if sub == "attention.qkv.weight":  # (heads, 3, hd, H) → (3, heads, hd, H)
                value = value.view(nh, 3, H // nh, H).transpose(0, 1).reshape(3 * H, H)
            elif sub == "mlp_in.weight":  # (F, 2, H) → (2, F, H)
                value = value.view(F, 2, H).transpose(0, 1).reshape(2 * F, H)
            out[f"layers.{i}.{_NAMES[sub]}"] = value
    return {k: v.contiguous().clone() for k, v in out.items()}


def modern_from_hf(hf: dict[str, torch.Tensor], tower: str, enc: EncoderConfig, padded_vocab: int) -> dict:
    """ModernBertModel's weights (with or without `model.`) → our `{tower}.*` names; its MLM head, where
    there is one, onto the generator head's names."""
    H, nh, F = enc.hidden_size, enc.num_heads, enc.intermediate_size
    reverse = {v: k for k, v in _NAMES.items()}
    heads = {"head.dense.weight": "generator_predictions.dense.weight",
             "head.dense.bias": "generator_predictions.dense.bias",
             "head.norm.weight": "generator_predictions.LayerNorm.weight",
             "decoder.bias": "generator_lm_head_bias"}  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        name = key.removeprefix("model.")
        if name == "embeddings.tok_embeddings.weight":
            out[f"{tower}.embeddings.word_embeddings.weight"] = fit_vocab_rows(value, (padded_vocab, H))
        elif name == "embeddings.norm.weight":
            out[f"{tower}.embeddings.LayerNorm.weight"] = value
        elif name == "final_norm.weight":
            out[f"{tower}.encoder.final_norm.weight"] = value
        elif m := re.fullmatch(r"layers\.(\d+)\.(.+)", name):
            i, sub = m.groups()
            if sub == "attn.Wqkv.weight":
                value = value.view(3, nh, H // nh, H).transpose(0, 1).reshape(3 * H, H)
            elif sub == "mlp.Wi.weight":
                value = value.view(2, F, H).transpose(0, 1).reshape(2 * F, H)
            out[f"{tower}.encoder.layers.{i}.{reverse[sub]}"] = value
        elif key in heads:
            t = fit_vocab_rows(value, (padded_vocab,)) if key == "decoder.bias" else value
            out[f"{tower}.{heads[key]}"] = t
        elif key != "decoder.weight":  # tied to the word embeddings
            raise KeyError(f"unexpected ModernBERT weight {key!r}")
    return out


def export_modern(model, out: Path) -> list[Path]:
    """out/discriminator as ModernBertModel (+ rtd_head.safetensors: `discriminator_predictions.*`, ours), and
    out/generator as ModernBertForMaskedLM where it can be one (its width = the embeddings': ModernBERT has
    no projection). The directories written."""
    from safetensors.torch import save_file

    cfg, state, written = model.cfg, model.state_dict(), []
    if model.discriminator is not None:
        d = out / "discriminator"
        d.mkdir(parents=True, exist_ok=True)
        hf_cfg = modern_config_dict(cfg, cfg.discriminator, architectures=["ModernBertModel"])
        (d / "config.json").write_text(json.dumps(hf_cfg, indent=2))
        save_file(modern_to_hf(state, "discriminator", cfg, cfg.discriminator), str(d / "model.safetensors"))
        head = {k: v.contiguous() for k, v in state.items() if k.startswith("discriminator.discriminator_predictions.")}
        save_file(head, str(d / "rtd_head.safetensors"), metadata={"what": "dense → gelu → dense_prediction: logit"})
        written.append(d)
    enc = cfg.generator if model.discriminator is not None else cfg.discriminator
    if model.generator is None or cfg.embedding_size != enc.hidden_size:
        log.info(f"export: the generator ({enc.hidden_size} wide over {cfg.embedding_size}-wide embeddings) has "
                 "no ModernBertForMaskedLM form; only the discriminator is written")  # fmt: skip
        return written
    d = out / "generator"
    d.mkdir(parents=True, exist_ok=True)
    hf_cfg = modern_config_dict(cfg, enc, architectures=["ModernBertForMaskedLM"], classifier_bias=True)
    (d / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    weights = {f"model.{k}": v for k, v in modern_to_hf(state, "generator", cfg, enc).items()}
    weights |= {"head.dense.weight": state["generator.generator_predictions.dense.weight"],
                "head.dense.bias": state["generator.generator_predictions.dense.bias"],
                "head.norm.weight": state["generator.generator_predictions.LayerNorm.weight"],
                "decoder.bias": state["generator.generator_lm_head_bias"][: cfg.vocab_size]}  # fmt: skip
    save_file({k: v.contiguous() for k, v in weights.items()}, str(d / "model.safetensors"))
    return [*written, d]


def model_config_from_modern(directory: Path) -> ModelConfig:
    """Our ModelConfig (architecture=modern) from a transformers ModernBERT directory's config, read by
    transformers itself (old and new spellings of its rope and layer-kind fields); what we cannot compute
    the same is refused by name."""
    import transformers as t

    c = t.ModernBertConfig.from_pretrained(directory)
    kinds = list(c.layer_types)
    every = next((i for i in range(1, len(kinds)) if kinds[i] == "full_attention"), len(kinds))
    biases = ("attention_bias", "mlp_bias", "norm_bias")
    problems = [f"{directory}: {k}={getattr(c, k)!r} is not supported" for k in biases if getattr(c, k)]
    if c.hidden_activation != "gelu":
        problems.append(f"{directory}: hidden_activation={c.hidden_activation!r} is not supported (only exact gelu)")
    if any((kind == "full_attention") != (i % every == 0) for i, kind in enumerate(kinds)):
        problems.append(f"{directory}: layer_types {kinds} is not a global layer every n-th")
    if problems:
        raise ConfigError(problems)
    enc = EncoderConfig(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size)
    rope = c.rope_parameters
    return ModelConfig(
        vocab_size=c.vocab_size,
        embedding_size=c.hidden_size,
        max_position_embeddings=c.max_position_embeddings,
        dropout=float(c.embedding_dropout),
        attention_dropout=float(c.attention_dropout),
        layer_norm_eps=c.norm_eps,
        initializer_range=c.initializer_range,
        architecture="modern",
        global_every=every,
        local_window=c.local_attention,
        rope_theta_global=float(rope["full_attention"]["rope_theta"]),
        rope_theta_local=float(rope["sliding_attention"]["rope_theta"]),
        discriminator=enc,
        generator=enc,
    )


def modern_state(directory: Path, tower: str = "discriminator") -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A ModernBERT directory's shape and weights under `tower` (our export's rtd_head.safetensors included);
    for the discriminator its MLM head, where it has one, is left out (ELECTRA's RTD head starts fresh)."""
    from electra_dist.interop.weights import read_weights

    cfg = model_config_from_modern(directory)
    hf = read_weights(directory)
    if tower == "discriminator":
        hf = {k: v for k, v in hf.items() if not k.startswith(("head.", "decoder."))}
    elif "head.dense.bias" not in hf and "head.dense.weight" in hf:  # classifier_bias=False: ours is a zero bias
        hf["head.dense.bias"] = torch.zeros(cfg.generator.hidden_size)
    state = modern_from_hf(hf, tower, cfg.discriminator, cfg.padded_vocab_size(1))
    head = directory / "rtd_head.safetensors"
    if tower == "discriminator" and head.is_file():
        from safetensors.torch import load_file

        state.update(load_file(str(head)))
    return cfg, state
