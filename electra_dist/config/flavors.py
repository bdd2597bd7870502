"""The named flavors: the paper's hyperparameters (Clark et al., 2020, and the official code)."""

from __future__ import annotations

from electra_dist.config.schema import EncoderConfig, ModelConfig, ObjectiveConfig, OptimConfig, TrainConfig
from electra_dist.config.tree import FLAVORS, Config


def _debug() -> Config:
    c = Config(flavor="debug", output_dir="runs/debug")
    c.model = ModelConfig(
        vocab_size=8000,
        embedding_size=64,
        max_position_embeddings=128,
        discriminator=EncoderConfig(2, 64, 2, 256),
        generator=EncoderConfig(2, 32, 1, 128),
    )
    c.train = TrainConfig(
        seq_len=128,
        global_batch_size=16,
        micro_batch_size=16,
        max_steps=200,
        log_interval=10,
        save_interval=100,
        eval_interval=100,
        eval_samples=64,
        precision="fp32",
    )
    c.optim = OptimConfig(lr=1e-3, warmup_steps=20)
    c.tracking.experiment = "electra-debug"
    return c


def _small() -> Config:
    c = Config(flavor="electra-small", output_dir="runs/electra-small")
    c.model = ModelConfig(
        embedding_size=128, discriminator=EncoderConfig(12, 256, 4, 1024), generator=EncoderConfig(12, 64, 1, 256)
    )
    c.train = TrainConfig(seq_len=128, global_batch_size=128, micro_batch_size=128, max_steps=1_000_000)
    c.optim = OptimConfig(lr=5e-4, warmup_steps=10000)
    c.objective = ObjectiveConfig(mask_prob=0.15)
    return c


def _base() -> Config:
    c = Config(flavor="electra-base", output_dir="runs/electra-base")
    c.model = ModelConfig(
        embedding_size=768, discriminator=EncoderConfig(12, 768, 12, 3072), generator=EncoderConfig(12, 256, 4, 1024)
    )
    c.train = TrainConfig(seq_len=512, global_batch_size=256, micro_batch_size=32, max_steps=766_000)
    c.optim = OptimConfig(lr=2e-4, warmup_steps=10000)
    c.objective = ObjectiveConfig(mask_prob=0.15)
    return c


def _large() -> Config:
    c = Config(flavor="electra-large", output_dir="runs/electra-large")
    c.model = ModelConfig(
        embedding_size=1024, discriminator=EncoderConfig(24, 1024, 16, 4096), generator=EncoderConfig(24, 256, 4, 1024)
    )
    c.train = TrainConfig(seq_len=512, global_batch_size=2048, micro_batch_size=32, max_steps=400_000)
    c.optim = OptimConfig(lr=2e-4, warmup_steps=10000)
    c.objective = ObjectiveConfig(mask_prob=0.25)
    return c


FLAVORS.update({"debug": _debug, "electra-small": _small, "electra-base": _base, "electra-large": _large})
