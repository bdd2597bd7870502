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


SEQ = 64  # the shards the tests share are packed to 64 tokens


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory):
    """A real SentencePiece model trained on the real sample text."""
    from electra_dist.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    train_tokenizer([str(SAMPLE)], 2000, out, lowercase=True)
    return out


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, tok_dir):
    """Real WebDataset shards of the sample text (seq 64, ~12 shards)."""
    from electra_dist.data.shards import build_shards

    out = tmp_path_factory.mktemp("shards")
    build_shards([str(SAMPLE)], tok_dir, SEQ, out, samples_per_shard=500, workers=1, progress=False, overwrite=True)
    return out
