"""`electra-dist gpu-check`: validate a GPU node inside one short allocation, with one report.

    electra-dist gpu-check --out gpu-report/                  # on one H100: report.md + report.json
    electra-dist gpu-check --out gpu-report/ --budget 300     # a tighter slot
    electra-dist gpu-check --out gpu-report/ --sections throughput,profile   # rerun only these

1. sanity: CUDA, the device, bf16 (a bf16 matmul against fp32), NCCL (a one-rank all-reduce);
2. gpu_tests: the `gpu`-marked kernel tests (tests/test_kernels.py), when the checkout has tests/;
3. training_run: 20 ZeRO-2 bf16 steps of the trainer on real shards, no evaluation: every loss
   finite and the loss falling;
4. throughput: tokens/s, TFLOP/s, MFU and peak memory of ELECTRA-Base (beside the HF baseline on the
   same batches) and ELECTRA-Large at seq 512, then modern-base (ModernBERT's block) at seq 1024, bf16, the
   trainer's own ZeRO-2 engine;
5. levers: each MFU option toggled alone against the defaults on ELECTRA-Base (fused vocabulary tail,
   SDPA kernel order, CUDA graphs): tokens/s and the ratio;
6. profile: the profiler's top kernels of one step of the Large engine the throughput section built.

Made for a first contact that may be cut short: the report is written after EVERY section (a run
killed at any point leaves every finished number, the interrupted section marked as such); the
`--budget` (default 480 s) is divided over the sections by share, time a section leaves unused goes
to the ones after it, and each section is stopped at its slice; every section runs even if an earlier
one failed. Nothing is compiled just in time that the run does not need (the optimizer is torch's
fused AdamW; DeepSpeed's FusedAdam test runs only where the op is prebuilt). Estimated on one
H100/H200 from cold caches: ~4–5 minutes. `--quick --allow-cpu` runs every section at toy size on a
CPU (how the command itself is tested).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from electra_dist.commands import PACKAGE_DIR, TRAIN_PY, child_env, training_deepspeed_json
from electra_dist.commands.gpuprofile import profile, profile_step
from electra_dist.commands.gpureport import markdown
from electra_dist.errors import UserError
from electra_dist.io import git_commit, write_atomic
from electra_dist.rundir import OutputDir

REPO = PACKAGE_DIR.parent
SHARES = {"sanity": 0.04, "gpu_tests": 0.12, "training_run": 0.20, "throughput": 0.40, "levers": 0.20, "profile": 0.04}
# each lever toggled alone against the defaults (Base, seq 512); the CPU run (--quick) skips CUDA graphs
LEVERS = [
    ("fused vocabulary tail off", "train.fused_vocab_tail=false"),
    ("attention: cudnn, flash, efficient, math", "train.attention_backends=cudnn,flash,efficient,math"),
    ("CUDA graphs (compile reduce-overhead)", "train.compile_mode=reduce-overhead"),
]


class OutOfBudget(Exception):
    pass


class Interrupted(BaseException):  # not an Exception: a section's own handlers must not swallow it
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run(
    out: str | Path,
    quick: bool = False,
    allow_cpu: bool = False,
    budget: float = 480.0,
    sections: list[str] | None = None,
    log=print,
) -> dict[str, Any]:
    import torch

    chosen = list(SHARES) if not sections else sections
    unknown = [s for s in chosen if s not in SHARES]
    if unknown:
        raise UserError(f"--sections: unknown {', '.join(unknown)} (choose from {', '.join(SHARES)})")
    if budget <= 0:
        raise UserError(f"--budget {budget:g}: must be > 0 seconds")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available() and not allow_cpu:
        raise UserError("gpu-check: no CUDA device here (pass --allow-cpu to run the checks on the CPU anyway)")
    check = Check(out, torch.cuda.is_available(), quick, budget, chosen, log)
    return check.run()


class Check:
    """The sections, the budget and the report, written after every section."""

    def __init__(self, out: Path, gpu: bool, quick: bool, budget: float, chosen: list[str], log):
        self.out, self.gpu, self.quick, self.budget, self.log = out, gpu, quick, budget, log
        self.chosen = chosen
        self.profiled: dict | None = None  # the throughput section's profile of its last engine
        self.report: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "commit": git_commit(short=True) or "?",
            "host": platform.node(),
            "quick": quick,
            "budget_s": budget,
            "complete": False,
            "ok": False,
            "sections": {name: {"ok": None, "status": "pending"} for name in chosen},
        }

    def run(self) -> dict[str, Any]:
        t_start = time.perf_counter()
        previous = {s: signal.signal(s, self._interrupt) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
        self.write()
        try:
            for i, name in enumerate(self.chosen):
                left = self.budget - (time.perf_counter() - t_start)
                rest = sum(SHARES[n] for n in self.chosen[i:])
                slice_s = max(1.0, left * SHARES[name] / rest)
                self._section(name, slice_s)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.report["seconds"] = round(time.perf_counter() - t_start, 1)
        self.write()
        return self.report

    def _section(self, name: str, slice_s: float) -> None:
        self.log(f"=== gpu-check: {name} (budget {slice_s:.0f} s)")
        result: dict[str, Any] = {"ok": None, "status": "running", "budget_s": round(slice_s, 1)}
        self.report["sections"][name] = result
        self.write()  # "running": a run killed without warning (SIGKILL) still says where it was
        t0 = time.perf_counter()
        try:
            with _deadline(slice_s):
                SECTIONS[name](self, result, slice_s)
            result.update(ok=True, status="passed")
        except Interrupted as e:
            result.update(ok=False, status="stopped", error=f"stopped by {e} after {time.perf_counter() - t0:.0f} s")
            self._finish(name, result, t0)
            raise SystemExit(128 + e.signum) from None
        except OutOfBudget:
            result.update(ok=False, status="failed", error=f"not finished within its {slice_s:.0f} s of the budget")
        except Exception as e:  # the report says what failed; the next section still runs
            result.update(
                ok=False, status="failed", error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-3000:]
            )
        self._finish(name, result, t0)

    def _finish(self, name: str, result: dict, t0: float) -> None:
        result["seconds"] = round(time.perf_counter() - t0, 1)
        s = self.report["sections"]
        self.report["complete"] = all(v["status"] in ("passed", "failed") for v in s.values())
        self.report["ok"] = self.report["complete"] and all(v["ok"] for v in s.values())
        self.write()
        self.log(
            f"=== gpu-check: {name} {result['status'].upper()}"
            f"{': ' + result['error'] if result.get('error') else ''} ({result['seconds']} s)"
        )

    def _interrupt(self, signum, frame):
        raise Interrupted(signum)

    def write(self) -> None:
        """report.json and report.md, each replaced whole (a reader never sees half a file)."""
        write_atomic(self.out / "report.json", json.dumps(self.report, indent=2))
        write_atomic(self.out / "report.md", markdown(self.report))


# ---- the sections: each fills `result` as it goes (a section stopped midway keeps what it has) -----------


def sanity(check: Check, result: dict, slice_s: float) -> None:
    import torch

    from electra_dist import parallel

    result.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=check.gpu)
    if not check.gpu:
        result["collective"] = parallel.collective_self_test("gloo")
        return
    props = torch.cuda.get_device_properties(0)
    a = torch.randn(2048, 2048, device="cuda")
    ref = a @ a
    err = ((a.bfloat16() @ a.bfloat16()).float() - ref).norm() / ref.norm()
    result.update(
        device=props.name,
        capability=f"{props.major}.{props.minor}",
        memory_gib=round(props.total_memory / 2**30, 1),
        bf16_supported=torch.cuda.is_bf16_supported(),
        bf16_matmul_rel_error=float(err),
    )
    result["collective"] = parallel.collective_self_test("nccl")
    if not result["bf16_supported"] or err > 1e-2 or not result["collective"]["all_reduce_ok"]:
        raise RuntimeError(f"sanity failed: {result}")


def gpu_tests(check: Check, result: dict, slice_s: float) -> None:
    tests = REPO / "tests" / "test_kernels.py"
    if not tests.is_file():
        result["skipped"] = "no tests/ beside the package (an installed copy): run from a checkout"
        return
    r = _run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", str(tests), "-p", "no:cacheprovider"],
        check.out / "gpu_tests.log",
        slice_s,
        cwd=REPO,
    )
    lines = r.stdout.strip().splitlines()
    result.update(summary=(lines or [""])[-1], skipped=[line for line in lines if line.startswith("SKIPPED")])
    if r.returncode not in (0, 5):  # 5: none collected
        raise RuntimeError(f"gpu tests failed: {result['summary']} (see {check.out / 'gpu_tests.log'})")


def training_run(check: Check, result: dict, slice_s: float) -> None:
    from electra_dist.commands.bench import sample_shards
    from electra_dist.tracking import read_metrics

    steps = 12 if check.quick else 20
    run_dir = check.out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # this check's own scratch run: a rerun starts afresh
    ds_json = check.out / "zero2.json"
    ds_json.write_text(json.dumps(training_deepspeed_json()[0]))
    shards = Path(sample_shards(128))
    cmd = [
        sys.executable,
        str(TRAIN_PY),
        "--deepspeed",
        str(ds_json),
        "--config",
        "debug" if check.quick else "electra-small",
        "--data",
        str(shards),
        "--tokenizer",
        str(shards.parent / "tokenizer"),
        "--output-dir",
        str(run_dir),
        "--max-steps",
        str(steps),
        "--resume",
        "never",
        "train.log_interval=1",
        "tracking.enabled=false",
        "data.num_workers=1",
        f"train.precision={'bf16' if check.gpu else 'fp32'}",
        "optim.warmup_steps=5",
        "train.eval_interval=0",
        f"train.save_interval={10 * steps}",
    ]
    if check.quick:
        cmd += ["train.micro_batch_size=4", "train.global_batch_size=8"]
    r = _run(cmd, check.out / "training_run.log", slice_s)
    if r.returncode != 0:
        raise RuntimeError(f"training exited {r.returncode} (see {check.out / 'training_run.log'})")
    losses = [rec["loss/total"] for rec in read_metrics(OutputDir(run_dir).metrics)]
    k = max(1, len(losses) // 5)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    result.update(
        steps=len(losses),
        loss_first=first,
        loss_last=last,
        all_finite=all(x == x and abs(x) != float("inf") for x in losses),
    )
    if not result["all_finite"] or not last < first:
        raise RuntimeError(f"the loss is not finite and falling: {result}")


def throughput(check: Check, result: dict, slice_s: float) -> None:
    from electra_dist.commands.bench import bench_train

    # the HF baseline for Base only: Large's would double the section for a ratio Base already gives;
    # ModernBERT-base's block (model.architecture=modern: GeGLU, rotary, FlexAttention's local band) last
    cases = (
        [("debug", 128, 4, 2, "hf")]
        if check.quick
        else [
            ("electra-base", 512, 32, 10, "hf"),
            ("electra-large", 512, 32, 10, None),
            ("modern-base", 1024, 16, 10, None),
        ]
    )
    profiled = cases[min(1, len(cases) - 1)][0]  # Large's step (debug's in the quick check)
    result["rows"] = rows = []
    for flavor, seq, micro, steps, baseline in cases:
        wanted = flavor == profiled and "profile" in check.chosen
        after = (lambda step, f=flavor: profile_step(check, step, f)) if wanted else None
        for r in bench_train(
            flavor,
            seq,
            micro,
            "bf16" if check.gpu else "fp32",
            steps=steps,
            warmup=3 if check.gpu else 1,
            baseline=baseline,
            after=after,
        ):
            rows.append(
                {
                    "flavor": flavor,
                    "seq_len": seq,
                    "micro_batch": micro,
                    "name": r.name,
                    "tokens_per_s": r.tokens_per_second,
                    "tflops": r.tflops,
                    "mfu": r.mfu,
                    "peak_memory_gib": r.peak_memory_gib,
                }
            )
        check.write()  # each flavor's numbers survive a stop during the next


def levers(check: Check, result: dict, slice_s: float) -> None:
    """Each MFU lever toggled alone against the defaults, ELECTRA-Base (the throughput section's row, or
    measured here first): tokens/s and the ratio. A lever that fails is a row saying why, not a failure."""
    from electra_dist.commands.bench import bench_train

    flavor, seq, micro, steps = ("debug", 128, 4, 2) if check.quick else ("electra-base", 512, 32, 6)
    precision, warmup = ("bf16", 3) if check.gpu else ("fp32", 1)
    rows = check.report["sections"].get("throughput", {}).get("rows", [])
    base = next(
        (r["tokens_per_s"] for r in rows if r["flavor"] == flavor and r["name"].startswith("electra_dist")), None
    )
    if base is None:
        base = bench_train(flavor, seq, micro, precision, steps=steps, warmup=warmup)[0].tokens_per_second
    result.update(flavor=flavor, default_tokens_per_s=base, rows=[])
    for name, override in LEVERS:
        row = {"lever": name, "override": override}
        result["rows"].append(row)
        if "compile_mode" in override and not check.gpu:
            row["skipped"] = "no CUDA graphs on CPU"
            continue
        try:
            r = bench_train(flavor, seq, micro, precision, steps=steps, warmup=warmup, overrides=[override])[0]
            row.update(tokens_per_s=r.tokens_per_second, mfu=r.mfu, vs_default=r.tokens_per_second / base)
        except Exception as e:  # noqa: BLE001 — a lever that cannot run here is a finding, not a failed check
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        check.write()


SECTIONS: dict[str, Callable[[Check, dict, float], None]] = {
    "sanity": sanity,
    "gpu_tests": gpu_tests,
    "training_run": training_run,
    "throughput": throughput,
    "levers": levers,
    "profile": profile,
}


@contextmanager
def _deadline(seconds: float):
    """OutOfBudget in this (the main) thread after `seconds`."""

    def expire(signum, frame):
        raise OutOfBudget()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run(cmd: list[str], log_file: Path, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`cmd` in its own process group, its output in `log_file`; the whole group ends with this section
    (its budget, or a signal to gpu-check): TERM, 10 s, KILL."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env=child_env(),
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except BaseException:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        raise
    log_file.write_text(output)
    return subprocess.CompletedProcess(cmd, proc.returncode, output, "")
