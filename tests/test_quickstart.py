"""The README's first command: the whole pipeline end to end on the built-in sample text."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from electra_dist.tracking import read_metrics

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "electra_dist", "quickstart", "--out", str(tmp_path), "--steps", "20"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "tokenizer" / "spm.model").is_file()
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["samples"] > 1000
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in records] == [5, 10, 15, 20]  # the held-out evaluations add records
    assert all("eval/loss" in m and "eval/discriminator_recall" in m for m in records)
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["eval_samples"] > 50
    assert "ZeRO-2" in r.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(json.loads((tmp_path / "run" / "tracking.json").read_text())["run_id"])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")) == [5, 10, 15, 20]
    for side in ("discriminator", "generator"):
        assert (tmp_path / "hf" / side / "model.safetensors").is_file()
        assert (tmp_path / "hf" / side / "spm.model").is_file()
    assert "ElectraForPreTraining loads it" in r.stdout
