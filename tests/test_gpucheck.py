"""`electra-dist gpu-check`: on a GPU node it is the acceptance run; here its every section runs at
toy size on the CPU (--quick --allow-cpu) and the report is checked — also when it is killed midway
and when a section overruns its share of --budget."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, child_env


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_refuses_without_cuda_unless_allowed(tmp_path, cli):
    r = cli("gpu-check", "--out", tmp_path)
    assert r.returncode == 2 and "no CUDA device here" in r.stderr and "--allow-cpu" in r.stderr


@pytest.mark.slow
def test_quick_run_on_cpu_writes_a_complete_report(tmp_path):
    # its own process, as users run it: in the test process it left Inductor's later compiles 10-20x slower
    proc = _gpu_check(tmp_path)
    output = proc.communicate(timeout=600)[0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert proc.returncode == 0 and report["ok"], (
        {k: v.get("error") for k, v in report["sections"].items()},
        output[-3000:],
    )
    s = report["sections"]
    assert list(s) == ["sanity", "gpu_tests", "training_run", "throughput", "levers", "profile"]
    assert all(v["status"] == "passed" and v["seconds"] <= v["budget_s"] for v in s.values()), s
    assert report["complete"] and report["seconds"] < report["budget_s"] == 480
    assert s["sanity"]["collective"]["all_reduce_ok"]
    assert s["training_run"]["all_finite"] and s["training_run"]["loss_last"] < s["training_run"]["loss_first"]
    assert [row["name"] for row in s["throughput"]["rows"]] == ["electra_dist", "hf"]
    assert all(row["tokens_per_s"] > 0 for row in s["throughput"]["rows"])
    assert len(s["profile"]["top"]) >= 5 and any("mm" in t["name"] for t in s["profile"]["top"])
    assert s["profile"]["source"].startswith("the throughput section's engine")  # not a second engine
    lv = {r["override"]: r for r in s["levers"]["rows"]}
    assert s["levers"]["default_tokens_per_s"] == s["throughput"]["rows"][0]["tokens_per_s"]
    assert (
        lv["train.fused_vocab_tail=false"]["tokens_per_s"] > 0 and lv["train.compile_mode=reduce-overhead"]["skipped"]
    )
    assert "error" not in lv["train.attention_backends=cudnn,flash,efficient,math"]  # CPU runs the math/flash kernels
    md = (tmp_path / "report.md").read_text()
    assert "Result: **PASSED**" in md and "| debug | hf |" in md and "## Top kernels" in md


def _gpu_check(out, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "electra_dist", "gpu-check", "--quick", "--allow-cpu", "--out", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )


def _report(out) -> dict:
    try:
        return json.loads((out / "report.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _trainers_of(out) -> list[int]:
    """Processes still running the training of this check (its run directory in their command line)."""
    pids = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and str(out / "run") in open(f"/proc/{p}/cmdline").read().replace("\0", " "):
                pids.append(int(p))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_killed_midway_it_leaves_every_finished_section(tmp_path):
    """SIGTERM during the training run (a slot's end): sanity and gpu_tests are in report.json and
    report.md, training_run says it was stopped, the rest pending; its trainer does not outlive it."""
    out = tmp_path / "report"
    proc = _gpu_check(out)
    deadline = time.time() + 240
    while _report(out).get("sections", {}).get("training_run", {}).get("status") != "running":
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    time.sleep(3)  # the trainer is starting
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    s = _report(out)["sections"]
    assert s["sanity"]["status"] == s["gpu_tests"]["status"] == "passed" and s["sanity"]["collective"]["all_reduce_ok"]
    assert s["training_run"]["status"] == "stopped" and "stopped by SIGTERM" in s["training_run"]["error"]
    assert s["throughput"]["status"] == s["levers"]["status"] == s["profile"]["status"] == "pending"
    md = (out / "report.md").read_text()
    assert "Result: **INCOMPLETE**" in md and "| training_run | stopped |" in md and "collective" in md
    assert not _trainers_of(out)


@pytest.mark.slow
def test_a_section_is_stopped_at_its_share_of_the_budget(tmp_path, cli):
    """--budget 6 for the training run alone (it needs ~15 s here): stopped at 6 s with the reason, the
    check ends soon after, its trainer with it; an unknown section name is refused up front."""
    out = tmp_path / "report"
    t0 = time.perf_counter()
    proc = _gpu_check(out, "--budget", "6", "--sections", "training_run")
    output = proc.communicate(timeout=120)[0]
    took = time.perf_counter() - t0
    report = _report(out)
    sec = report["sections"]["training_run"]
    assert proc.returncode == 1 and list(report["sections"]) == ["training_run"], output[-3000:]
    assert sec["status"] == "failed" and sec["error"] == "not finished within its 6 s of the budget", sec
    assert 6 <= sec["seconds"] < 6 + 12 and took < 6 + 30, (sec, took)
    assert not _trainers_of(out)
    r = cli("gpu-check", "--quick", "--allow-cpu", "--out", tmp_path / "x", "--sections", "sanity,throughputs")
    assert r.returncode == 2 and "--sections: unknown throughputs (choose from sanity, gpu_tests" in r.stderr, r.stderr


@pytest.mark.slow
def test_the_gpu_node_script_installs_the_wheels_finds_the_real_toolkit_and_runs_the_check(tmp_path):
    """bench/gpu_node.sh on a "bare node": the wheels go into a temp dir (not this environment), CUDA_HOME
    comes from where a wrapper `nvcc` on PATH says its toolkit is, and gpu-check writes its report."""
    import zipfile

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "nodepkg-0.1-py3-none-any.whl", "w") as z:
        z.writestr("nodepkg/__init__.py", "VALUE = 42\n")
        z.writestr("nodepkg-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: nodepkg\nVersion: 0.1\n")
        z.writestr(
            "nodepkg-0.1.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr("nodepkg-0.1.dist-info/RECORD", "")
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "bin" / "nvcc").write_text("#!/bin/sh\nexit 0\n")
    (toolkit / "bin" / "nvcc").chmod(0o755)
    wrappers = tmp_path / "wrappers"  # a site's module wrapper: not inside the toolkit
    wrappers.mkdir()
    (wrappers / "nvcc").write_text(f"#!/bin/sh\necho '#$ _NVVM_BRANCH_=nvvm'\necho '#$ TOP={toolkit}/bin/..'\n")
    (wrappers / "nvcc").chmod(0o755)
    env = {k: v for k, v in child_env().items() if k != "CUDA_HOME"}
    env["PATH"] = f"{wrappers}:{env['PATH']}"
    r = subprocess.run(
        [
            "bash",
            str(ROOT / "bench" / "gpu_node.sh"),
            "--wheels",
            str(wheels),
            "--out",
            "report",
            "--quick",
            "--allow-cpu",
            "--sections",
            "sanity",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    site = r.stdout.split("installed 1 wheel(s) from ")[1].split(" into ")[1].split()[0]
    assert (Path(site) / "nodepkg" / "__init__.py").is_file() and not site.startswith(sys.prefix)
    assert f"CUDA_HOME={toolkit} (from nvcc)" in r.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())  # --out relative to where it ran
    assert report["ok"] and report["sections"]["sanity"]["status"] == "passed"
