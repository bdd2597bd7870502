"""The trainer: build order, one training step, the loop, metrics, checkpoints and signals.

Build order (fixed, top to bottom in __init__): processes and groups → DeepSpeed JSON checked
against the config → tokenizer and shards checked → model (same seed on every rank, so TP
shards slice identical full weights) → optimizer and schedule → DeepSpeed engine → loader →
resume → signal handlers → tracker. Everything that can be wrong is found before step 1.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from electra_dist import parallel
from electra_dist.config import Config, ConfigError, resolve_deepspeed_config
from electra_dist.data.masking import SpecialIds
from electra_dist.flops import flops_per_sequence, peak_tflops
from electra_dist.model import ElectraPretrainer
from electra_dist.tracking import Tracker, make_tracker, plot_run, run_params

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
LATEST = "latest"
METRICS = "metrics.jsonl"
FINAL = "final"
PREEMPTED = "PREEMPTED"


class NonFiniteError(RuntimeError):
    pass


@dataclass
class Batch:
    """One micro-batch on its way to the model; `keys` name the samples for error messages."""

    tensors: dict[str, torch.Tensor]
    keys: list[str]
    tokens: float  # non-pad tokens, counted on the CPU before the copy (no device sync)
    masked: float


def lr_multiplier(step: int, warmup: int, total: int) -> float:
    """The official ELECTRA schedule: linear decay to 0 over `total`, times min(1, step / warmup)."""
    decay = max(0.0, 1.0 - step / max(1, total))
    return decay * (min(1.0, step / warmup) if warmup > 0 else 1.0)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay on matrices and embeddings; none on LayerNorm parameters and biases (all 1-D)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    def __init__(self, cfg: Config, ds_json: dict[str, Any], resume: str = "auto",
                 loader_factory: Callable[["Trainer"], Any] | None = None, tracker: Tracker | None = None,
                 log: Callable[[str], None] | None = None):
        cfg.validate()
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.ckpt_dir = self.output_dir / CHECKPOINTS

        # 1. processes, devices and groups
        self.env, self.device = parallel.init_distributed()
        self.rank, self.world = self.env.rank, self.env.world_size
        self.is_main = self.rank == 0
        self._log = log or (lambda msg: print(msg, flush=True) if self.is_main else None)
        tp = cfg.parallel.tensor_parallel_size
        parallel.init_model_parallel(tp)
        self.mpu = parallel.MPU()
        self.tp_size, self.tp_rank = tp, self.mpu.get_model_parallel_rank()
        self.dp_size, self.dp_rank = self.mpu.get_data_parallel_world_size(), self.mpu.get_data_parallel_rank()

        # 2. the DeepSpeed JSON against the config
        self.ds_config = resolve_deepspeed_config(cfg, ds_json, self.dp_size)
        self.grad_accum = self.ds_config["gradient_accumulation_steps"]
        self.zero_stage = self.ds_config.get("zero_optimization", {}).get("stage", 0)
        if self.zero_stage == 3 and tp > 1:
            raise ConfigError([f"ZeRO stage 3 with parallel.tensor_parallel_size={tp} is not supported: use "
                               "configs/zero2.json (or zero1/zero0) with tensor parallelism, or TP=1 with ZeRO-3"])

        # 3. data and tokenizer, checked before anything is allocated
        self.special = self._check_data()

        # 4. model: the same seed on every rank, so every rank builds the same full weights
        torch.manual_seed(cfg.train.seed)
        factory = parallel.layer_factory(tp, cfg.model.initializer_range)
        model = ElectraPretrainer(cfg.model, cfg.objective, factory)
        from electra_dist import kernels

        kernels.install(model, compile_blocks=cfg.train.compile, log=self._log)
        # dropout differs between data-parallel ranks, agrees within a tensor-parallel group
        torch.manual_seed(cfg.train.seed + 1 + self.dp_rank)

        # 5. optimizer and schedule
        o = cfg.optim
        groups = param_groups(model, o.weight_decay)
        optimizer = self._optimizer(groups)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_multiplier(s, o.warmup_steps, cfg.train.max_steps))

        # 6. engine
        import deepspeed

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=schedule, mpu=self.mpu, config=self.ds_config,
            dist_init_required=False)
        self.model: ElectraPretrainer = self.engine.module

        # 7. data
        self.loader = loader_factory(self) if loader_factory else self._default_loader()

        # 8. state, then resume
        self.step = 0
        self.tokens_seen = 0  # non-pad tokens over all DP ranks
        self.flops_seen = 0.0
        self.skipped_steps = 0
        self.resumed_from: str | None = None
        self.resumed_run_id: str | None = None
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume != "never":
            self._resume(resume)
        self._data_iter = iter(self.loader)

        # 9. tracking (global rank 0): the resumed run continues the same MLflow run
        self.tracker = tracker or make_tracker(cfg, self.is_main, self.output_dir / METRICS,
                                               run_id=self.resumed_run_id or self._run_id_on_disk(), log=self._log)
        if self.is_main:
            self._log_run_start()

        # 10. signals: SLURM pre-emption (USR1) and termination (TERM) → checkpoint, exit cleanly
        self._signal = 0
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

        # 11. yardsticks
        seq = cfg.train.seq_len
        self.device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.peak = peak_tflops(self.device_name, cfg.train.precision)
        self._flops_per_token_full = flops_per_sequence(cfg.model, seq, cfg.objective.mask_prob * seq,
                                                        cfg.objective.kind) / seq
        n_params = sum(p.numel() for p in self.model.parameters())
        self._log(f"electra-dist: world {self.world} = TP {tp} × DP {self.dp_size}, ZeRO-{self.zero_stage}, "
                  f"{cfg.train.precision}, device {self.device_name}; {n_params / 1e6:.2f}M parameters per TP "
                  f"rank; global batch {cfg.train.global_batch_size} = {cfg.train.micro_batch_size} × "
                  f"{self.dp_size} DP × {self.grad_accum} accumulation; steps {self.step} → {cfg.train.max_steps}")

    # ---- build helpers --------------------------------------------------------------------
    def _check_data(self) -> SpecialIds:
        from electra_dist.data.loader import resolve_shards
        from electra_dist.data.shards import check_compatible
        from electra_dist.data.tokenizer import Tokenizer

        d, problems = self.cfg.data, []
        tokenizer = None
        if d.tokenizer:
            try:
                tokenizer = Tokenizer(d.tokenizer)
            except FileNotFoundError as e:
                problems.append(f"data.tokenizer: {e}")
        manifest = None
        if not d.shards:
            problems.append("data.shards: empty; pass --data DIR (build shards with `electra-dist shards build`)")
        else:
            try:
                _, manifest = resolve_shards(d.shards)
            except (FileNotFoundError, ValueError) as e:
                problems.append(f"data.shards: {e}")
        if manifest is not None:
            try:
                check_compatible(manifest, tokenizer, self.cfg.train.seq_len, where=f"shards in {d.shards}")
            except ValueError as e:
                problems.extend(str(e).splitlines())
        vocab = tokenizer.vocab_size if tokenizer else manifest["tokenizer"]["vocab_size"] if manifest else None
        if vocab is not None and vocab != self.cfg.model.vocab_size:
            self._log(f"electra-dist: model.vocab_size {self.cfg.model.vocab_size} → {vocab} (the tokenizer's)")
            self.cfg.model.vocab_size = vocab
        if problems:
            raise ConfigError(problems)
        if tokenizer is not None:
            return tokenizer.special
        if manifest is not None:
            return SpecialIds(**manifest["tokenizer"]["special"])
        return SpecialIds()

    def _optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        o = self.cfg.optim
        kw = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
        if self.device.type == "cuda":
            try:
                from deepspeed.ops.adam import FusedAdam

                return FusedAdam(groups, adam_w_mode=True, **kw)
            except Exception as e:  # no nvcc/ninja to build the op: torch's fused AdamW is next best
                self._log(f"electra-dist: DeepSpeed FusedAdam unavailable ({type(e).__name__}: {e}); "
                          "using torch AdamW(fused=True)")
                return torch.optim.AdamW(groups, fused=True, **kw)
        return torch.optim.AdamW(groups, **kw)

    def _default_loader(self):
        from electra_dist.data.loader import LoaderSettings, PretrainLoader

        c = self.cfg
        mlm = c.objective.kind == "mlm"
        settings = LoaderSettings(
            seq_len=c.train.seq_len, micro_batch_size=c.train.micro_batch_size, special=self.special,
            mask_prob=c.objective.mask_prob, mask_fraction=0.8 if mlm else c.objective.mask_token_fraction,
            random_fraction=0.1 if mlm else 0.0, vocab_size=c.model.vocab_size, seed=c.train.seed,
            shuffle_buffer=c.data.shuffle_buffer, on_corrupt=c.data.on_corrupt)
        return PretrainLoader(c.data.shards, settings, self.dp_rank, self.dp_size, num_workers=c.data.num_workers,
                              dp_split=c.data.dp_split)

    # ---- one step -------------------------------------------------------------------------
    def _next_batch(self) -> Batch:
        b = next(self._data_iter)
        keys = b.pop("keys", [])
        b.pop("epoch", None)
        return Batch({k: v.to(self.device, non_blocking=True) for k, v in b.items()}, keys,
                     float(b["attention_mask"].sum()), float(b["masked_positions"].sum()))

    def train_step(self) -> dict[str, Any]:
        """All micro-batches of one optimizer step. One all-reduce up front carries the global
        token counts (for the loss normalizers) and every rank's stop signal."""
        micro = [self._next_batch() for _ in range(self.grad_accum)]
        local = torch.tensor([sum(b.tokens for b in micro), sum(b.masked for b in micro), float(self._signal)],
                             dtype=torch.float64, device=self.device)
        dist.all_reduce(local)
        tokens, masked = (local[:2] / self.tp_size).tolist()  # TP ranks hold the same batch
        if local[2].item() > 0:  # a rank was signalled: every rank stops before this step
            return {"stop": True}
        n = self.dp_size * self.grad_accum
        sums: dict[str, torch.Tensor] = {}
        for b in micro:
            out = self.engine(**b.tensors, masked_normalizer=masked / n, token_normalizer=tokens / n)
            self.engine.backward(out.loss)
            self.engine.step()
            for k, v in (("loss", out.loss), ("generator_loss", out.generator_loss),
                         ("discriminator_loss", out.discriminator_loss), *out.stats.items()):
                sums[k] = sums.get(k, 0) + v.detach().float()
        return {"sums": sums, "tokens": tokens, "stop": False, "keys": [k for b in micro for k in b.keys]}

    # ---- the loop -------------------------------------------------------------------------
    def train(self) -> str:
        """Run to train.max_steps; returns "finished", or "preempted" after a signal."""
        c = self.cfg.train
        self._metrics_file = self.output_dir / METRICS
        window: dict[str, torch.Tensor] = {}
        window_tokens, window_steps, t0 = 0.0, 0, time.perf_counter()
        status = "finished"
        last_saved = self.step
        while self.step < c.max_steps:
            result = self.train_step()
            if result["stop"]:
                # the batches just fetched were not trained on; rewind the loader by them
                self._rewind_loader()
                status = "preempted"
                self._log(f"electra-dist: signal received: checkpointing at step {self.step} and exiting")
                break
            self._check_finite(result)
            self.step += 1
            self.tokens_seen += int(result["tokens"])
            self.flops_seen += result["tokens"] * self._flops_per_token_full
            for k, v in result["sums"].items():
                window[k] = window.get(k, 0) + v
            window_tokens += result["tokens"]
            window_steps += 1
            if self.step % c.log_interval == 0 or self.step == c.max_steps:
                self._log_metrics(window, window_tokens, window_steps, time.perf_counter() - t0)
                window, window_tokens, window_steps, t0 = {}, 0.0, 0, time.perf_counter()
            if self.step % c.save_interval == 0 and self.step < c.max_steps:
                self.save()
                last_saved = self.step
        if status == "preempted" or self.step != last_saved:
            self.save()
        if status == "finished":
            self.save_final()
        if self.is_main:  # the marker a batch script checks to requeue the job
            marker = self.output_dir / PREEMPTED
            if status == "preempted":
                marker.write_text(json.dumps({"step": self.step, "signal": self._signal, "time": time.time()}))
            else:
                marker.unlink(missing_ok=True)
        return status

    def _rewind_loader(self) -> None:
        if hasattr(self.loader, "consumed"):
            self.loader.consumed -= self.grad_accum

    def _check_finite(self, result: dict[str, Any]) -> None:
        loss = result["sums"]["loss"]
        norm = self.engine.get_global_grad_norm()
        bad = torch.tensor([0.0 if math.isfinite(float(loss)) else 1.0], device=self.device)
        fp16 = self.cfg.train.precision == "fp16"
        if norm is not None and not math.isfinite(float(norm)) and not fp16:
            bad[0] = 1.0
        flags = bad.clone()
        dist.all_reduce(flags)
        if fp16:  # DeepSpeed's loss scaler skips overflowing steps; count them
            self.skipped_steps = int(getattr(self.engine, "skipped_steps", 0))
        if flags.item() > 0:
            mine = bad.item() > 0
            where = (f"on rank {self.rank} (loss {float(loss)}, grad norm {norm}); the batch held samples "
                     f"{', '.join(result['keys'][:16])}{' …' if len(result['keys']) > 16 else ''}") if mine else \
                f"on another rank (rank {self.rank} was finite)"
            msg = f"non-finite loss or gradients at step {self.step + 1} {where}"
            print(f"electra-dist: error: {msg}", file=sys.stderr, flush=True)
            raise NonFiniteError(msg)

    # ---- metrics --------------------------------------------------------------------------
    def _log_metrics(self, window: dict[str, torch.Tensor], tokens: float, steps: int, seconds: float) -> None:
        keys = sorted(window)
        vec = torch.stack([torch.as_tensor(window[k], dtype=torch.float64, device=self.device) for k in keys])
        dist.all_reduce(vec, group=self.mpu.get_data_parallel_group())
        s = dict(zip(keys, vec.tolist()))
        micro_total = steps * self.grad_accum * self.dp_size
        tflops = tokens * self._flops_per_token_full / seconds / 1e12 / self.world
        m = {
            "loss/total": s["loss"] / micro_total,
            "loss/generator": s["generator_loss"] / micro_total,
            "loss/discriminator": s["discriminator_loss"] / micro_total,
            "acc/generator": s["generator_correct"] / max(1.0, s["masked"]),
            "acc/discriminator": s["discriminator_correct"] / max(1.0, s["tokens"]),
            "discriminator/precision": s["true_positive"] / max(1.0, s["predicted_positive"]),
            "discriminator/recall": s["true_positive"] / max(1.0, s["replaced"]),
            "discriminator/replaced_fraction": s["replaced"] / max(1.0, s["tokens"]),
            "optim/lr": float(self.scheduler.get_last_lr()[0]),
            "optim/grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
            "throughput/tokens_per_s": tokens / seconds,
            "throughput/tflops_per_device": tflops,
            "progress/tokens": float(self.tokens_seen),
            "progress/flops": self.flops_seen,
            "progress/skipped_steps": float(self.skipped_steps),
        }
        if self.peak:
            m["throughput/mfu"] = tflops / self.peak
        if self.device.type == "cuda":
            m["memory/max_allocated_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            import psutil

            m["memory/rss_gib"] = psutil.Process().memory_info().rss / 2**30
        if self.is_main:
            record = {"step": self.step, "time": time.time(), **m}
            with open(self._metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.tracker.log_metrics(m, self.step)
            mfu = f" mfu {m['throughput/mfu']:.1%}" if "throughput/mfu" in m else ""
            self._log(f"step {self.step:>7} | loss {m['loss/total']:.4f} gen {m['loss/generator']:.4f} "
                      f"disc {m['loss/discriminator']:.4f} | acc gen {m['acc/generator']:.3f} disc "
                      f"{m['acc/discriminator']:.3f} | lr {m['optim/lr']:.2e} | {m['throughput/tokens_per_s']:,.0f} tok/s"
                      f"{mfu}")

    # ---- checkpoints ----------------------------------------------------------------------
    def client_state(self) -> dict[str, Any]:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "flops_seen": self.flops_seen,
                "loader": self.loader.state_dict() if hasattr(self.loader, "state_dict") else None,
                "tracking_run_id": self.tracker.run_id, "config": self.cfg.to_dict(), "world_size": self.world,
                "skipped_steps": self.skipped_steps}

    def save(self) -> Path:
        """A DeepSpeed checkpoint at this step; "latest" moves only once every rank has written."""
        tag = f"step{self.step:08d}"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state=self.client_state(), save_latest=False)
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}
        torch.save(rng, self.ckpt_dir / tag / f"rng_rank{self.rank:05d}.pt")
        dist.barrier()
        if self.is_main:
            (self.ckpt_dir / tag / COMPLETE).write_text(json.dumps({"step": self.step, "time": time.time(),
                                                                    "world_size": self.world}))
            tmp = self.ckpt_dir / (LATEST + ".tmp")
            tmp.write_text(tag)
            tmp.replace(self.ckpt_dir / LATEST)
            for old in complete_checkpoints(self.ckpt_dir)[: -self.cfg.train.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
            self._log(f"electra-dist: saved checkpoint {self.ckpt_dir / tag}")
        dist.barrier()
        return self.ckpt_dir / tag

    def _resume(self, resume: str) -> None:
        if resume == "auto":
            found = complete_checkpoints(self.ckpt_dir)
            if not found:
                return
            path = found[-1]
        else:
            path = Path(resume)
            if (path / LATEST).is_file():
                path = path / (path / LATEST).read_text().strip()
            if not (path / COMPLETE).is_file():
                raise ConfigError([f"--resume: {path} is not a complete checkpoint (no {COMPLETE} marker)"])
        load_path, state = self.engine.load_checkpoint(str(path.parent), tag=path.name)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.flops_seen = float(state.get("flops_seen", 0.0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if state.get("loader") is not None and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state["loader"])
        rng_file = path / f"rng_rank{self.rank:05d}.pt"
        if rng_file.is_file() and state.get("world_size") == self.world:
            rng = torch.load(rng_file, weights_only=False)
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"])
        self.resumed_run_id = state.get("tracking_run_id")
        self.resumed_from = str(path)
        if self.is_main:
            truncate_metrics(self.output_dir / METRICS, self.step)
        self._log(f"electra-dist: resumed from {path} at step {self.step}")

    def save_final(self) -> Path | None:
        """The consolidated model (config.yaml + model.pt, TP gathered) for export and fine-tuning."""
        from electra_dist.checkpoint import save_model

        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.model.parameters())):
                full = parallel.gather_state_dict(self.model)
        else:
            full = parallel.gather_state_dict(self.model)
        out = self.output_dir / FINAL
        if self.is_main:
            plain = ElectraPretrainer(self.cfg.model, self.cfg.objective)
            plain.load_state_dict({k: v.float() for k, v in full.items()}, strict=True)
            save_model(out, plain, self.cfg)
            self._log(f"electra-dist: wrote the final model to {out} (export with `electra-dist export "
                      f"--checkpoint {out} --out DIR`)")
        dist.barrier()
        return out

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signum

    # ---- tracking -------------------------------------------------------------------------
    def _run_id_on_disk(self) -> str | None:
        f = self.output_dir / "tracking.json"
        if self.resumed_from and f.is_file():
            return json.loads(f.read_text()).get("run_id")
        return None

    def _log_run_start(self) -> None:
        self.cfg.save(self.output_dir / "config.yaml")
        (self.output_dir / "deepspeed.json").write_text(json.dumps(self.ds_config, indent=2))
        if self.resumed_from is None:
            self.tracker.log_params(run_params(self.cfg, self.ds_config, self.world, self.tp_size, self.dp_size))
            self.tracker.log_artifact(self.output_dir / "config.yaml")
            self.tracker.log_artifact(self.output_dir / "deepspeed.json")
            if self.cfg.data.tokenizer:
                self.tracker.log_artifact(self.cfg.data.tokenizer, "tokenizer")
        self.tracker.set_tags({"status": "running", "resumed_from": self.resumed_from or ""})

    def close(self, status: str = "finished") -> None:
        """Log the run's record as artifacts, close the tracker with `status`, leave the groups."""
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        if self.is_main:
            metrics_file = self.output_dir / METRICS
            if metrics_file.is_file():
                self.tracker.log_artifact(metrics_file)
                png = plot_run(metrics_file, self.output_dir / "curves.png")
                if png:
                    self.tracker.log_artifact(png)
            if status == "finished" and self.cfg.tracking.log_hf_export and (self.output_dir / FINAL).is_dir():
                from electra_dist.checkpoint import export_hf, load_model

                model, _ = load_model(self.output_dir / FINAL)
                hf = export_hf(model, self.output_dir / "hf", self.cfg.data.tokenizer or None)
                self.tracker.log_artifact(hf, "hf")
        self.tracker.close(status)
        parallel.destroy()


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint tags with a COMPLETE marker, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and (p / COMPLETE).is_file())


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records after `step` (logged after the checkpoint we resume from): one continuous history."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)
