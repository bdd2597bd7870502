"""gpu-check's report.md, from its report.json (written after every section: a report of a run cut
short shows what finished and what did not)."""

from __future__ import annotations

import json


def markdown(report: dict) -> str:
    s = report["sections"]
    state = "PASSED" if report["ok"] else ("FAILED" if report["complete"] else "INCOMPLETE")
    lines = [
        f"# GPU check — {report['date']}, commit {report['commit']}",
        "",
        f"Result: **{state}**"
        + (" (quick, toy sizes)" if report["quick"] else "")
        + f"; budget {report['budget_s']:g} s",
        "",
        "| section | status | seconds | budget s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {v['status']} | {v.get('seconds', '—')} | {v.get('budget_s', '—')} |" for n, v in s.items()]
    lines.append("")
    if "sanity" in s:
        san = s["sanity"]
        lines += [
            "## Sanity",
            "",
            f"device {san.get('device', 'cpu')}, torch {san.get('torch')}, CUDA {san.get('cuda')}, "
            f"bf16 {san.get('bf16_supported')}, bf16 matmul rel. error {san.get('bf16_matmul_rel_error')}, "
            f"collective {san.get('collective')}",
            "",
        ]
    for name in ("gpu_tests", "training_run"):
        if name in s:
            body = {k: v for k, v in s[name].items() if k not in ("trace",)}
            lines += [f"## {name.replace('_', ' ')}", "", f"`{json.dumps(body)}`", ""]
    lines += _throughput_lines(s) + _lever_lines(s)
    if "profile" in s:
        lines += [
            f"## Top kernels ({s['profile'].get('flavor', '?')} step)",
            "",
            "| kernel | calls | ms |",
            "|---|---|---|",
        ]
        lines += [f"| `{t['name']}` | {t['calls']} | {t['ms']} |" for t in s["profile"].get("top", [])]
    failed = [f"- {n}: {v['error']}" for n, v in s.items() if v.get("error")]
    return "\n".join(lines + ([""] + ["## Failures", ""] + failed if failed else []) + [""])


def _throughput_lines(s: dict) -> list[str]:
    """The throughput table (tokens/s, TFLOP/s, MFU, memory per flavor and implementation)."""
    lines: list[str] = []
    if "throughput" in s:
        lines = [
            "## Throughput (the trainer's ZeRO-2 engine; HF on the same real batches)",
            "",
            "| flavor | implementation | tokens/s | TFLOP/s | MFU | peak memory GiB |",
            "|---|---|---|---|---|---|",
        ]
        for r in s["throughput"].get("rows", []):
            mfu = f"{r['mfu']:.1%}" if r["mfu"] else "—"
            lines.append(
                f"| {r['flavor']} | {r['name']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} | {mfu} | "
                f"{r['peak_memory_gib']:.1f} |"
            )
        lines.append("")
    return lines


def _lever_lines(s: dict) -> list[str]:
    """The MFU levers table: each option alone against the defaults."""
    lines: list[str] = []
    if "levers" in s:
        lv = s["levers"]
        lines = [
            f"## MFU levers, each alone against the defaults ({lv.get('flavor', '?')}, "
            f"{lv.get('default_tokens_per_s', 0):,.0f} tokens/s)",
            "",
            "| lever | tokens/s | × default |",
            "|---|---|---|",
        ]
        for r in lv.get("rows", []):
            got = (
                f"{r['tokens_per_s']:,.0f} | {r['vs_default']:.2f}"
                if "tokens_per_s" in r
                else f"— | {r.get('skipped') or r.get('error', 'not run')}"
            )
            lines.append(f"| {r['lever']} (`{r['override']}`) | {got} |")
        lines.append("")
    return lines
