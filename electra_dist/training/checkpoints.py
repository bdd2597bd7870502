"""Training checkpoints: save, COMPLETE marker, atomic `latest`, rotation, RNG state, resume,
metrics truncation, the consolidated final model and the PREEMPTED marker.

OUTPUT/checkpoints/stepNNNNNNNN/ holds DeepSpeed's files (model, optimizer, our client state:
step, tokens, FLOPs, loader position, MLflow run id, config) and one RNG file per rank. Every rank
writes into stepNNNNNNNN.tmp/; then rank 0 records each file's size and SHA-256 in COMPLETE and
renames the directory into place, and only then moves `latest` (itself written and renamed). A
complete checkpoint is never written again. Resuming verifies sizes and checksums and falls back
to the newest checkpoint that verifies, saying which were skipped and why. The last
`train.keep_last` complete ones are kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from electra_dist import parallel
from electra_dist.config import ConfigError
from electra_dist.errors import writing
from electra_dist.io import sha256_file
from electra_dist.model import ElectraPretrainer
from electra_dist.model.electra import fit_vocab_rows
from electra_dist.rundir import OutputDir
from electra_dist.tracking.record import truncate_metrics
from electra_dist.training.build import Run
from electra_dist.training.guard import data_changes, data_identity
from electra_dist.training.optim import continue_schedule

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
LATEST = "latest"


@dataclass
class TrainState:
    """What the loop advances and a checkpoint restores."""

    step: int = 0
    tokens_seen: int = 0  # non-pad tokens over all DP ranks
    flops_seen: float = 0.0
    skipped_steps: int = 0
    resumed_from: str | None = None
    run_id: str | None = None  # the MLflow run, continued on resume
    changed: dict[str, str] = field(default_factory=dict)  # settings a resume changed, recorded as tags

    def advance(self, tokens: float, flops_per_token: float) -> None:
        self.step += 1
        self.tokens_seen += int(tokens)
        self.flops_seen += tokens * flops_per_token


class CheckpointManager:
    def __init__(self, run: Run):
        self.run = run
        self.out = OutputDir(run.cfg.output_dir)
        self.dir = self.out.checkpoints
        self.data = data_identity(run.cfg)  # the same for the whole run: recorded in every checkpoint
        self.last_saved = 0  # the step of the newest checkpoint on disk (resume sets it)
        self.before_save: Callable[[], None] = lambda: None  # raises rather than save a poisoned state
        self.busy: Callable[[], ContextManager] = contextlib.nullcontext  # a signal waits for a save
        if run.layout.is_main:
            self.out.root.mkdir(parents=True, exist_ok=True)

    def guard(self, before_save: Callable[[], None], busy: Callable[[], ContextManager]) -> None:
        """What every save of the loop goes through: `before_save` (the metrics' finiteness check) first,
        then the write inside `busy()` (StopSignals.busy: a signal then waits for the checkpoint)."""
        self.before_save, self.busy = before_save, busy

    def maybe_save(self, state: TrainState) -> Path | None:
        """A checkpoint at every train.save_interval-th step before the last (the last is `finish`'s)."""
        if state.step % self.run.cfg.train.save_interval or state.step >= self.run.cfg.train.max_steps:
            return None
        self.before_save()
        with self.busy():
            return self.save(state)

    def finish(self, state: TrainState, preempted: bool, signal: int = 0) -> str:
        """The end of the loop: a checkpoint of this step (unless it is on disk already), the final model
        at train.max_steps, the PREEMPTED marker; "finished", "preempted" or "stopped" (--until-step)."""
        self.before_save()
        with self.busy():
            if state.step != self.last_saved:  # a signal right after a save must not write that step again
                self.save(state)
            if not preempted and state.step == self.run.cfg.train.max_steps:
                self.save_final()
        if not preempted and state.step < self.run.cfg.train.max_steps:
            return "stopped"
        if self.run.layout.is_main:  # OUTPUT/PREEMPTED while steps are left: what a batch script checks to requeue
            marker = self.out.preempted
            if preempted:
                marker.write_text(json.dumps({"step": state.step, "signal": signal, "time": time.time()}))
            else:
                marker.unlink(missing_ok=True)
        return "preempted" if preempted else "finished"

    def save(self, state: TrainState) -> Path:
        """A DeepSpeed checkpoint at this step, written under a temporary name, its files' sizes and
        SHA-256 recorded in COMPLETE, then renamed into place; "latest" moves only after that. A
        complete checkpoint is never written again."""
        run, tag = self.run, f"step{state.step:08d}"
        final, tmp = self.dir / tag, self.dir / (tag + ".tmp")
        if _sound(final, run):
            log.info(f"{final} is already complete; not written again")
            self.last_saved = state.step
            return final
        if run.layout.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # what a crash mid-save left behind
            if (final / COMPLETE).is_file():  # complete once, damaged since: kept aside, written anew
                final.rename(final.with_name(f"{tag}.damaged-{int(time.time())}"))
        parallel.barrier()
        with writing(tmp):
            run.engine.save_checkpoint(
                str(self.dir), tag=tmp.name, client_state=self._client_state(state), save_latest=False
            )
            rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if cuda(run) else None}
            torch.save(rng, tmp / f"rng_rank{run.layout.rank:05d}.pt")
        parallel.barrier()
        if run.layout.is_main:
            files = {
                str(f.relative_to(tmp)): {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
                for f in sorted(tmp.rglob("*"))
                if f.is_file()
            }
            layout = parallel.current_layout(run.engine)
            marker = {
                "step": state.step,
                "time": time.time(),
                "world_size": run.layout.world,
                "files": files,
                "layout": {"tp": layout.tp, "dp": layout.dp, "zero": layout.zero},
                "data": self.data,
            }
            latest = self.dir / (LATEST + ".tmp")
            with writing(tmp / COMPLETE):
                (tmp / COMPLETE).write_text(json.dumps(marker))
                shutil.rmtree(final, ignore_errors=True)  # an incomplete one of an earlier attempt
                tmp.replace(final)
                latest.write_text(tag)
                latest.replace(self.dir / LATEST)
            for old in complete_checkpoints(self.dir)[: -run.cfg.train.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
            log.info(f"saved checkpoint {final}")
        parallel.barrier()
        self.last_saved = state.step
        return final

    def _client_state(self, state: TrainState) -> dict[str, Any]:
        loader = self.run.loader
        return {
            "step": state.step,
            "tokens_seen": state.tokens_seen,
            "flops_seen": state.flops_seen,
            "loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
            "tracking_run_id": state.run_id,
            "config": self.run.cfg.to_dict(),
            "world_size": self.run.layout.world,
            "skipped_steps": state.skipped_steps,
            "schedule": self.run.scheduler.lr_lambdas[0].state(),
            "frozen_generator": getattr(self.run.model.frozen_generator, "source", None),  # its path and checksum
        }

    def resume(self, spec: str = "auto", allow_data_change: bool = False) -> TrainState:
        """`auto`: the newest complete checkpoint in OUTPUT/checkpoints, if any; `never`; or a path.
        The tokenizer and shards must be the checkpoint's unless `allow_data_change`."""
        if spec == "never":
            return TrainState()
        path = choose_checkpoint(self.dir, spec, self.run.layout.is_main)
        if path is None:
            return TrainState()
        run = self.run
        marker = json.loads((path / COMPLETE).read_text())
        changes = _data_changes(run, path, marker.get("data"), self.data, allow_data_change)
        saved = _load_engine_state(run, path, marker.get("layout"), _group_names(run.model))
        _same_generator(run, path, saved.get("frozen_generator"))
        state = TrainState(
            int(saved["step"]),
            int(saved.get("tokens_seen", 0)),
            float(saved.get("flops_seen", 0.0)),
            int(saved.get("skipped_steps", 0)),
            str(path),
            saved.get("tracking_run_id"),
        )
        if changes:
            state.changed["data"] = "; ".join(changes)
        continue_schedule(run, state, saved, path)
        if saved.get("loader") is not None and hasattr(run.loader, "load_state_dict"):
            # on other data (allowed) the position is kept in batches; the shard count is today's
            run.loader.load_state_dict({**saved["loader"], **({"num_shards": len(run.loader.urls)} if changes else {})})
        rng_file = path / f"rng_rank{run.layout.rank:05d}.pt"
        if rng_file.is_file() and saved.get("world_size") == run.layout.world:
            rng = parallel.load_checkpoint_file(rng_file)
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and run.layout.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"])
        if run.layout.is_main:
            truncate_metrics(self.out.metrics, state.step)
        log.info(f"resumed from {path} at step {state.step}")
        self.last_saved = state.step
        return state

    def save_final(self) -> Path:
        """The consolidated model (config.yaml + model.pt, TP gathered) for export and fine-tuning."""
        from electra_dist.interop import export_hf, save_model

        run = self.run
        full = parallel.full_state_dict(run.model, run.zero_stage)
        out = self.out.final
        if run.layout.is_main:
            plain = ElectraPretrainer(run.cfg.model, run.cfg.objective)
            shapes = {k: v.shape for k, v in plain.state_dict().items()}  # TP=1's vocabulary padding
            plain.load_state_dict(
                {k: fit_vocab_rows(v.float(), shapes[k]) if k in shapes else v.float() for k, v in full.items()},
                strict=True,
            )
            save_model(out, plain, run.cfg)
            log.info(f"wrote the final model to {out} (export with `electra-dist export --checkpoint {out} --out DIR`)")
            if run.cfg.tracking.log_hf_export:  # logged as the run's artifact when it closes
                export_hf(plain, self.out.hf_export, run.cfg.data.tokenizer or None)
        parallel.barrier()
        return out


def choose_checkpoint(ckpt_dir: Path, spec: str, is_main: bool) -> Path | None:
    """Which checkpoint to resume: rank 0 verifies, every rank gets its choice: with `auto` the newest
    complete checkpoint whose files match what was written (saying which were skipped and why); a path must verify."""
    choice, error = None, None
    if is_main:
        if spec == "auto":
            for candidate in reversed(complete_checkpoints(ckpt_dir)):
                reason = verify(candidate)
                if reason is None:
                    choice = str(candidate)
                    break
                print(f"electra-dist: warning: skipping checkpoint {candidate}: {reason}", file=sys.stderr, flush=True)
        else:
            path = Path(spec)
            if (path / LATEST).is_file():
                path = path / (path / LATEST).read_text().strip()
            if not (path / COMPLETE).is_file():
                error = f"--resume: {path} is not a complete checkpoint (no {COMPLETE} marker)"
            elif (reason := verify(path)) is not None:
                error = f"--resume: {path} cannot be trusted: {reason}"
            else:
                choice = str(path)
    choice, error = parallel.broadcast_from_main((choice, error))
    if error:
        raise ConfigError([error])
    return Path(choice) if choice else None


def _group_names(model) -> list[list[str]]:
    """Parameter names of each optimizer group, in order (the same for any TP size)."""
    from electra_dist.training.optim import param_groups

    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in param_groups(model, 0.0)]


def _sound(ckpt: Path, run: Run) -> bool:
    """On every rank (one collective, whatever each rank's view of the disk): rank 0 found `ckpt` complete
    and verifying (a damaged one is written anew)."""
    return bool(
        parallel.broadcast_from_main(
            (ckpt / COMPLETE).is_file() and verify(ckpt) is None if run.layout.is_main else None
        )
    )


def cuda(run: Run) -> bool:
    return run.layout.device.type == "cuda"


def _data_changes(run: Run, path: Path, saved: dict | None, now: dict, allowed: bool) -> list[str]:
    """How today's tokenizer and shards differ from the checkpoint's; refused unless `allowed`."""
    changes = data_changes(saved, now)
    if changes and not allowed:
        raise ConfigError(
            [
                f"--resume: {path} was trained on other data; " + "; ".join(changes) + ". Resume with "
                "the tokenizer and shards it used, start another --output-dir, or pass "
                "--allow-data-change to continue on these"
            ]
        )
    if changes:
        log.warning("resuming on other data (--allow-data-change): " + "; ".join(changes))
    return changes


def _same_generator(run: Run, path: Path, saved: dict | None) -> None:
    """A frozen generator is no part of the checkpoint: the one corrupting now must be the one it trained with."""
    now = getattr(run.model.frozen_generator, "source", None)
    if saved and now and saved["checksum"] != now["checksum"]:
        raise ConfigError(
            [
                f"--resume: {path} was trained with the frozen generator {saved['path']} (checksum "
                f"{saved['checksum'][:12]}); model.generator_from={now['path']} now holds other weights "
                f"(checksum {now['checksum'][:12]}). Point it at the weights the run began with, or use another "
                "--output-dir"
            ]
        )


def _load_engine_state(run: Run, path: Path, recorded: dict | None, group_names: list[list[str]]) -> dict[str, Any]:
    """The engine's weights and optimizer from `path` (re-sharded from another layout when needed); the
    client state. A model of another shape is one error naming the first differing tensor."""
    try:
        resharded = parallel.resume_on_new_layout(
            run.engine, path, group_names, parallel.SavedLayout(**recorded) if recorded else None
        )
        if resharded is not None:
            saved, was = resharded
            log.info(f"{path} was written by {was}: re-sharded onto {parallel.current_layout(run.engine)}")
            return saved
        load_path, saved = run.engine.load_checkpoint(str(path.parent), tag=path.name)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        raise ConfigError(
            [
                f"--resume: {path} holds a model of another shape ("
                + next(line.strip() for line in str(e).splitlines() if "size mismatch" in line)
                + "): resume with the config it was written with, or use another --output-dir "
                "(or --resume never)"
            ]
        ) from None
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
    return saved


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint tags with a COMPLETE marker, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(
        p for p in ckpt_dir.iterdir() if p.is_dir() and not p.name.endswith(".tmp") and (p / COMPLETE).is_file()
    )


def verify(path: Path) -> str | None:
    """None if every file the COMPLETE marker lists has its recorded size and SHA-256, else why not
    (a marker listing no files verifies nothing: refused)."""
    try:
        files = json.loads((path / COMPLETE).read_text()).get("files")
    except (OSError, ValueError) as e:
        return f"its {COMPLETE} marker is unreadable ({e})"
    if not files:
        return f"its {COMPLETE} marker lists no files to verify"
    for rel, meta in sorted(files.items()):
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != meta["bytes"]:
            return f"{rel} holds {f.stat().st_size} bytes where {meta['bytes']} were written"
        if sha256_file(f) != meta["sha256"]:
            return f"{rel} does not match the SHA-256 recorded when it was written"
    return None
