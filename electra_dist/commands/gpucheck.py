"""`electra-dist gpu-check`: validate a GPU node in about ten minutes, with one report.

    electra-dist gpu-check --out gpu-report/          # on one H100: writes report.md + report.json

1. sanity: CUDA, the device, bf16 (a bf16 matmul against fp32), NCCL (a one-rank all-reduce);
2. the `gpu`-marked tests (FusedAdam against AdamW, a bf16 step against fp32), when the checkout
   has tests/;
3. a 50-step ZeRO-2 bf16 training run on real shards: every loss finite and the loss falling;
4. tokens/s, TFLOP/s, MFU and peak memory of ELECTRA-Base and -Large at seq 512 (bf16, the
   trainer's own engine) beside the HF baseline on the same batches;
5. the profiler's top kernels of one Large step.

Every section runs even if an earlier one failed; the report says which passed. `--quick --allow-cpu`
runs the same sections at toy size on a CPU (how the command itself is tested).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from electra_dist.commands import PACKAGE_DIR, TRAIN_PY, ZERO2_AUTO, child_env

REPO = PACKAGE_DIR.parent


def run(out: str | Path, quick: bool = False, allow_cpu: bool = False, log=print) -> dict[str, Any]:
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available() and not allow_cpu:
        raise ValueError("gpu-check: no CUDA device here (pass --allow-cpu to run the checks on the CPU anyway)")
    gpu = torch.cuda.is_available()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": _commit(),
                              "host": platform.node(), "quick": quick, "sections": {}}
    sections: list[tuple[str, Callable[[], dict]]] = [
        ("sanity", lambda: _sanity(gpu)),
        ("gpu_tests", lambda: _gpu_tests(out)),
        ("training_run", lambda: _training_run(out, gpu, quick)),
        ("throughput", lambda: _throughput(gpu, quick)),
        ("profile", lambda: _profile(gpu, quick)),
    ]
    for name, section in sections:
        log(f"=== gpu-check: {name}")
        t0 = time.perf_counter()
        try:
            result = {"ok": True, **section()}
        except Exception as e:  # the report says what failed; the next section still runs
            result = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        report["sections"][name] = result
        log(f"=== gpu-check: {name} {'passed' if result['ok'] else 'FAILED: ' + result['error']} "
            f"({result['seconds']} s)")
    report["ok"] = all(s["ok"] for s in report["sections"].values())
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    return report


def _sanity(gpu: bool) -> dict:
    import torch

    from electra_dist import parallel

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": gpu}
    if not gpu:
        return {**info, "collective": parallel.collective_self_test("gloo")}
    props = torch.cuda.get_device_properties(0)
    a = torch.randn(2048, 2048, device="cuda")
    ref = a @ a
    err = ((a.bfloat16() @ a.bfloat16()).float() - ref).norm() / ref.norm()
    info.update(device=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                bf16_supported=torch.cuda.is_bf16_supported(), bf16_matmul_rel_error=float(err),
                collective=parallel.collective_self_test("nccl"))
    if not info["bf16_supported"] or err > 1e-2 or not info["collective"]["all_reduce_ok"]:
        raise RuntimeError(f"sanity failed: {info}")
    return info


def _gpu_tests(out: Path) -> dict:
    if not (REPO / "tests").is_dir():
        return {"skipped": "no tests/ beside the package (an installed copy): run from a checkout"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider"],
                       capture_output=True, text=True, cwd=REPO, env=child_env(), timeout=900)
    (out / "gpu_tests.log").write_text(r.stdout + r.stderr)
    summary = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode not in (0, 5):  # 5: none collected
        raise RuntimeError(f"gpu tests failed: {summary} (see {out / 'gpu_tests.log'})")
    return {"summary": summary}


def _training_run(out: Path, gpu: bool, quick: bool) -> dict:
    from electra_dist.commands.bench import sample_shards
    from electra_dist.tracking import read_metrics

    steps = 12 if quick else 50
    run_dir = out / "run"
    ds_json = out / "zero2.json"
    ds_json.write_text(json.dumps(ZERO2_AUTO))
    shards = Path(sample_shards(128))
    cmd = [sys.executable, str(TRAIN_PY), "--deepspeed", str(ds_json), "--config",
           "debug" if quick else "electra-small", "--data", str(shards), "--tokenizer", str(shards.parent / "tokenizer"),
           "--output-dir", str(run_dir), "--max-steps", str(steps), "--resume", "never", "train.log_interval=1",
           "tracking.enabled=false", "data.num_workers=1", f"train.precision={'bf16' if gpu else 'fp32'}",
           "optim.warmup_steps=5"]
    if quick:
        cmd += ["train.micro_batch_size=4", "train.global_batch_size=8"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=900)
    (out / "training_run.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"training exited {r.returncode} (see {out / 'training_run.log'})")
    losses = [rec["loss/total"] for rec in read_metrics(run_dir / "metrics.jsonl")]
    k = max(1, len(losses) // 5)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    result = {"steps": len(losses), "loss_first": first, "loss_last": last,
              "all_finite": all(x == x and abs(x) != float("inf") for x in losses)}
    if not result["all_finite"] or not last < first:
        raise RuntimeError(f"the loss is not finite and falling: {result}")
    return result


def _throughput(gpu: bool, quick: bool) -> dict:
    from electra_dist.commands.bench import bench_train

    cases = [("debug", 128, 4, 2)] if quick else [("electra-base", 512, 32, 10), ("electra-large", 512, 32, 10)]
    rows = []
    for flavor, seq, micro, steps in cases:
        for r in bench_train(flavor, seq, micro, "bf16" if gpu else "fp32", steps=steps, warmup=3 if gpu else 1,
                             baseline="hf"):
            rows.append({"flavor": flavor, "seq_len": seq, "micro_batch": micro, "name": r.name,
                         "tokens_per_s": r.tokens_per_second, "tflops": r.tflops, "mfu": r.mfu,
                         "peak_memory_gib": r.peak_memory_gib})
    return {"rows": rows}


def _profile(gpu: bool, quick: bool) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from electra_dist import parallel
    from electra_dist.commands.bench import _our_step, real_batches, sample_shards
    from electra_dist.config import Config

    flavor, seq, micro = ("debug", 128, 4) if quick else ("electra-large", 512, 32)
    cfg = Config.build(flavor, [f"train.seq_len={seq}", f"train.micro_batch_size={micro}",
                                f"train.global_batch_size={micro}", f"train.precision={'bf16' if gpu else 'fp32'}"])
    layout = parallel.setup(1)
    try:
        step = _our_step(cfg, real_batches(sample_shards(seq), seq, micro, cfg.objective.mask_prob, 4), 1, layout)
        for _ in range(2):
            step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        with profile(activities=activities) as prof:
            step()
            if gpu:
                torch.cuda.synchronize()
    finally:
        parallel.destroy()
    attr = "self_device_time_total" if gpu else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr, 0), reverse=True)[:15]
    return {"flavor": flavor, "top": [{"name": e.key[:90], "calls": e.count, "ms": round(getattr(e, attr, 0) / 1e3, 3)}
                                      for e in events]}


def markdown(report: dict) -> str:
    s = report["sections"]
    lines = [f"# GPU check — {report['date']}, commit {report['commit']}", "",
             f"Result: **{'PASSED' if report['ok'] else 'FAILED'}**" + (" (quick, toy sizes)" if report["quick"] else ""),
             ""]
    san = s.get("sanity", {})
    lines += ["## Sanity", "", f"device {san.get('device', 'cpu')}, torch {san.get('torch')}, CUDA {san.get('cuda')}, "
              f"bf16 {san.get('bf16_supported')}, bf16 matmul rel. error {san.get('bf16_matmul_rel_error')}, "
              f"collective {san.get('collective')}", ""]
    for name in ("gpu_tests", "training_run"):
        sec = s.get(name, {})
        body = {k: v for k, v in sec.items() if k not in ("trace",)}
        lines += [f"## {name.replace('_', ' ')}", "", f"`{json.dumps(body)}`", ""]
    lines += ["## Throughput (the trainer's engine and HF on the same real batches)", "",
              "| flavor | implementation | tokens/s | TFLOP/s | MFU | peak memory GiB |", "|---|---|---|---|---|---|"]
    for r in s.get("throughput", {}).get("rows", []):
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "—"
        lines.append(f"| {r['flavor']} | {r['name']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} | {mfu} | "
                     f"{r['peak_memory_gib']:.1f} |")
    lines += ["", f"## Top kernels ({s.get('profile', {}).get('flavor', '?')} step)", "", "| kernel | calls | ms |",
              "|---|---|---|"]
    lines += [f"| `{t['name']}` | {t['calls']} | {t['ms']} |" for t in s.get("profile", {}).get("top", [])]
    failed = [f"- {n}: {v['error']}" for n, v in s.items() if not v["ok"]]
    return "\n".join(lines + ([""] + ["## Failures", ""] + failed if failed else []) + [""])


def _commit() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "?"
