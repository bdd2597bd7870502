"""`electra-dist compare`: runs of an MLflow experiment side by side, as a table and as curves
against steps, tokens or training FLOPs — the axis the ELECTRA paper argues with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

X_KEYS = {"step": None, "tokens": "progress/tokens", "flops": "progress/flops"}
FINAL_KEYS = [
    "loss/total",
    "loss/generator",
    "loss/discriminator",
    "acc/generator",
    "acc/discriminator",
    "eval/loss",
    "eval/generator_accuracy",
    "eval/discriminator_auc",
    "throughput/tokens_per_s",
    "throughput/mfu",
]
NOISY_PARAMS = ("version.", "git.", "slurm.", "tracking.run_name", "output_dir")


@dataclass
class RunCurve:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    final: dict[str, float]
    x: list[float]
    y: list[float]


def load_runs(uri: str, experiment: str, run_ids: list[str] | None, metric: str, x: str) -> list[RunCurve]:
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise ValueError(f"no MLflow store at {uri} (pass --tracking-uri, or run where the runs' mlflow.db is)")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(
            f"--experiment: no experiment {experiment!r} at {uri}; there are: {', '.join(names) or 'none'}"
        )
    if run_ids:
        runs = []
        for rid in run_ids:
            found = [
                r for r in client.search_runs([exp.experiment_id], max_results=10000) if r.info.run_id.startswith(rid)
            ]
            if not found:
                raise ValueError(f"--runs: no run {rid!r} in experiment {experiment!r}")
            runs.extend(found)
    else:
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=10000)
    if not runs:
        raise ValueError(f"experiment {experiment!r} has no runs")
    curves = []
    for r in runs:
        hist = {m.step: m.value for m in client.get_metric_history(r.info.run_id, metric)}
        if X_KEYS[x]:
            xs = {m.step: m.value for m in client.get_metric_history(r.info.run_id, X_KEYS[x])}
            steps = sorted(s for s in hist if s in xs)
            xv = [xs[s] for s in steps]
        else:
            steps = sorted(hist)
            xv = [float(s) for s in steps]
        curves.append(
            RunCurve(
                r.info.run_id,
                r.info.run_name or r.info.run_id[:8],
                r.data.tags.get("status", r.info.status.lower()),
                dict(r.data.params),
                {k: v for k, v in r.data.metrics.items() if k in FINAL_KEYS},
                xv,
                [hist[s] for s in steps],
            )
        )
    if not any(c.y for c in curves):
        have = sorted({k for r in runs for k in r.data.metrics})
        raise ValueError(
            f"--metric: no run in {experiment!r} logged {metric!r}; they have: {', '.join(have) or 'none'}"
        )
    return curves


def differing_params(curves: list[RunCurve]) -> list[str]:
    keys = sorted({k for c in curves for k in c.params})
    return [k for k in keys if not k.startswith(NOISY_PARAMS) and len({c.params.get(k) for c in curves}) > 1]


def table(curves: list[RunCurve], metric: str) -> str:
    diff = differing_params(curves)
    header = ["run", "id", "status", *diff, *[k for k in FINAL_KEYS if any(k in c.final for c in curves)]]
    rows = []
    for c in curves:
        row = [c.name, c.run_id[:8], c.status, *[c.params.get(k, "—") for k in diff]]
        for k in header[3 + len(diff) :]:
            v = c.final.get(k)
            row.append(
                "—"
                if v is None
                else f"{v:.1%}"
                if k == "throughput/mfu"
                else f"{v:,.0f}"
                if k.endswith("tokens_per_s")
                else f"{v:.4f}"
            )
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*map(str, r)) for r in rows]
    if not diff:
        lines.append("(the runs share every parameter)")
    return "\n".join(lines)


def plot(curves: list[RunCurve], metric: str, x: str, out: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig = figure(curves, metric, x, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def figure(curves: list[RunCurve], metric: str, x: str, title: str):
    """The comparison as a matplotlib figure: the legend beside the axes, decade ticks on log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator

    fig, ax = plt.subplots(figsize=(10, 5))
    for c in curves:
        if c.x:
            ax.plot(c.x, c.y, label=f"{c.name} ({c.run_id[:8]})", marker="." if len(c.x) < 30 else None)
    ax.set_xlabel({"step": "optimizer step", "tokens": "non-pad tokens seen", "flops": "training FLOPs"}[x])
    if x != "step":
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=8))  # decades only: labels never overlap
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # beside the plot, never over the curves or the y label
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")
    fig.tight_layout()
    return fig
