"""The named flavors as data: each is the dotted overrides that turn the base defaults into the paper's
hyperparameters for that size (Clark et al., 2020, and the official code). `Config.from_name` applies
them; a YAML file names one as its `flavor` and overrides the rest. The `modern-*` flavors are ModernBERT's
shapes (Warner et al., 2024: base 22 × 768, large 28 × 1024, GeGLU FFN, local window 128, a global layer
every third) trained with ELECTRA's recipe; the generator at ELECTRA's width ratio."""

from __future__ import annotations

from typing import Any


def _encoder(side: str, layers: int, hidden: int, heads: int, ffn: int) -> dict[str, int]:
    return {
        f"model.{side}.num_layers": layers,
        f"model.{side}.hidden_size": hidden,
        f"model.{side}.num_heads": heads,
        f"model.{side}.intermediate_size": ffn,
    }


FLAVORS: dict[str, dict[str, Any]] = {
    "debug": {
        "output_dir": "runs/debug",
        "model.vocab_size": 8000,
        "model.embedding_size": 64,
        "model.max_position_embeddings": 128,
        **_encoder("discriminator", 2, 64, 2, 256),
        **_encoder("generator", 2, 32, 1, 128),
        "train.seq_len": 128,
        "train.global_batch_size": 16,
        "train.micro_batch_size": 16,
        "train.max_steps": 200,
        "train.log_interval": 10,
        "train.save_interval": 100,
        "train.eval_interval": 100,
        "train.eval_samples": 64,
        "train.precision": "fp32",
        "optim.lr": 1e-3,
        "optim.warmup_steps": 20,
        "tracking.experiment": "electra-debug",
    },
    "electra-small": {
        "output_dir": "runs/electra-small",
        "model.embedding_size": 128,
        **_encoder("discriminator", 12, 256, 4, 1024),
        **_encoder("generator", 12, 64, 1, 256),
        "train.seq_len": 128,
        "train.global_batch_size": 128,
        "train.micro_batch_size": 128,
        "train.max_steps": 1_000_000,
        "optim.lr": 5e-4,
        "optim.warmup_steps": 10000,
        "objective.mask_prob": 0.15,
    },
    "electra-base": {
        "output_dir": "runs/electra-base",
        "model.embedding_size": 768,
        **_encoder("discriminator", 12, 768, 12, 3072),
        **_encoder("generator", 12, 256, 4, 1024),
        "train.seq_len": 512,
        "train.global_batch_size": 256,
        "train.micro_batch_size": 32,
        "train.max_steps": 766_000,
        "optim.lr": 2e-4,
        "optim.warmup_steps": 10000,
        "objective.mask_prob": 0.15,
    },
    "electra-large": {
        "output_dir": "runs/electra-large",
        "model.embedding_size": 1024,
        **_encoder("discriminator", 24, 1024, 16, 4096),
        **_encoder("generator", 24, 256, 4, 1024),
        "train.seq_len": 512,
        "train.global_batch_size": 2048,
        "train.micro_batch_size": 32,
        "train.max_steps": 400_000,
        "optim.lr": 2e-4,
        "optim.warmup_steps": 10000,
        "objective.mask_prob": 0.25,
    },
    **{
        f"modern-{size}": {
            "output_dir": f"runs/modern-{size}",
            "model.architecture": "modern",
            "model.embedding_size": hidden,  # ModernBERT has no embedding projection
            "model.max_position_embeddings": 8192,  # a bound only: rotary positions have no table
            "model.layer_norm_eps": 1e-5,
            "model.dropout": 0.0,
            "model.attention_dropout": 0.0,
            **_encoder("discriminator", layers, hidden, heads, ffn),
            **_encoder("generator", layers, gen_hidden, gen_hidden // 64, gen_hidden * 3 // 2),
            "train.seq_len": 1024,
            "train.global_batch_size": batch,
            "train.micro_batch_size": micro,
            "train.max_steps": steps,
            "optim.lr": lr,
            "optim.warmup_steps": 10000,
            "objective.mask_prob": mask,
        }
        for size, layers, hidden, heads, ffn, gen_hidden, batch, micro, steps, lr, mask in (
            ("small", 12, 256, 4, 384, 64, 128, 64, 1_000_000, 5e-4, 0.15),
            ("base", 22, 768, 12, 1152, 256, 256, 16, 766_000, 2e-4, 0.15),
            ("large", 28, 1024, 16, 2624, 256, 2048, 16, 400_000, 2e-4, 0.25),
        )
    },
}
