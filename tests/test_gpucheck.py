"""`electra-dist gpu-check`: on a GPU node it is the acceptance run; here its every section runs at
toy size on the CPU (--quick --allow-cpu) and the report is checked."""

import json

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_refuses_without_cuda_unless_allowed(tmp_path, cli):
    r = cli("gpu-check", "--out", tmp_path)
    assert r.returncode == 2 and "no CUDA device here" in r.stderr and "--allow-cpu" in r.stderr


@pytest.mark.slow
def test_quick_run_on_cpu_writes_a_complete_report(tmp_path, cli, one_rank_env):
    r = cli("gpu-check", "--out", tmp_path, "--quick", "--allow-cpu")
    report = json.loads((tmp_path / "report.json").read_text())
    assert r.returncode == 0 and report["ok"], {k: v.get("error") for k, v in report["sections"].items()}
    s = report["sections"]
    assert set(s) == {"sanity", "gpu_tests", "training_run", "throughput", "profile"}
    assert s["sanity"]["collective"]["all_reduce_ok"]
    assert s["training_run"]["all_finite"] and s["training_run"]["loss_last"] < s["training_run"]["loss_first"]
    assert [row["name"] for row in s["throughput"]["rows"]] == ["electra_dist", "hf"]
    assert all(row["tokens_per_s"] > 0 for row in s["throughput"]["rows"])
    assert len(s["profile"]["top"]) >= 5 and any("mm" in t["name"] for t in s["profile"]["top"])
    md = (tmp_path / "report.md").read_text()
    assert "Result: **PASSED**" in md and "| debug | hf |" in md and "## Top kernels" in md
