"""Shared fixtures: tiny configs and real text. Tests never read ../shared."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from electra_dist.config import Config  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "electra_dist" / "assets" / "sample.jsonl.gz"


def tiny_config(**overrides) -> Config:
    """A 2-layer model that runs in milliseconds; dropout off so runs compare exactly."""
    base = {
        "model.vocab_size": 1000, "model.embedding_size": 32, "model.max_position_embeddings": 64,
        "model.discriminator.hidden_size": 64, "model.discriminator.num_heads": 4,
        "model.discriminator.intermediate_size": 128,
        "model.generator.hidden_size": 32, "model.generator.num_heads": 2,
        "model.generator.intermediate_size": 64,
        "model.dropout": 0.0, "model.attention_dropout": 0.0, "train.seq_len": 64,
    }
    base.update(overrides)
    return Config.from_name("debug", **base).validate()


@pytest.fixture
def tiny() -> Config:
    return tiny_config()


@pytest.fixture(scope="session")
def real_documents() -> list[str]:
    """Real English text shipped with the package (public-domain sources)."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]
