"""Everything a training run is built from, in a fixed order, every check before step 1.

processes and groups → DeepSpeed JSON checked against the config → tokenizer and shards checked
→ model (the same seed on every rank, so TP shards slice identical full weights) → optimizer and
schedule → DeepSpeed engine → loader. The result is a `Run`: plain data the loop reads.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch

from electra_dist import parallel
from electra_dist.config import Config
from electra_dist.data.vocab import SpecialIds
from electra_dist.model import ElectraPretrainer, kernels
from electra_dist.model.electra import ElectraGenerator, fit_vocab_rows, standalone_generator
from electra_dist.training.flops import flops_per_sequence, peak_tflops
from electra_dist.training.optim import build_optimizer, lr_schedule, param_groups, temperature_at
from electra_dist.training.resolve import Resolved
from electra_dist.training.step import grad_norm_flags

log = logging.getLogger(__name__)


@dataclass
class Run:
    cfg: Config
    layout: parallel.Layout
    ds_config: dict[str, Any]
    special: SpecialIds
    engine: Any  # deepspeed.DeepSpeedEngine
    scheduler: Any
    loader: Any

    @property
    def model(self) -> ElectraPretrainer:
        return self.engine.module

    @property
    def grad_accum(self) -> int:
        return self.ds_config["gradient_accumulation_steps"]

    @property
    def zero_stage(self) -> int:
        return parallel.zero_stage(self.ds_config)

    @property
    def grad_norm_mode(self) -> dict[str, bool]:
        return grad_norm_flags(self.cfg.train.precision, self.zero_stage)

    def temperature(self, step: int) -> float:
        """The Gumbel sampling temperature of optimizer step `step` (objective.temperature_schedule)."""
        o = self.cfg.objective
        return temperature_at(
            step, self.cfg.train.max_steps, o.temperature_start, o.temperature, o.temperature_schedule
        )

    @functools.cached_property
    def flops_per_token(self) -> float:
        """Training FLOPs per non-pad token at the configured mask rate (generator head at masked positions)."""
        c, seq = self.cfg, self.cfg.train.seq_len
        frozen = getattr(self.model.frozen_generator, "cfg", None)
        return flops_per_sequence(c.model, seq, c.objective.mask_prob * seq, c.objective.kind, frozen) / seq

    @property
    def peak_tflops(self) -> float | None:
        return peak_tflops(self.layout.device_name, self.cfg.train.precision)


def build_run(resolved: Resolved, ds_json: dict[str, Any]) -> Run:
    """Processes and groups, the DeepSpeed JSON against the config, the engine (model, optimizer,
    schedule) and the loader, from a resolved config."""
    cfg, special, source = resolved.cfg, resolved.special, resolved.source
    layout = parallel.setup(cfg.parallel.tensor_parallel_size, cfg.parallel.collective_timeout)
    ds_config = parallel.resolve_deepspeed_config(cfg, ds_json, layout.dp_size)
    engine, scheduler = build_engine(cfg, ds_config, layout, source, resolved.generator)
    run = Run(cfg, layout, ds_config, special, engine, scheduler, build_loader(cfg, special, layout))
    n_params = sum(p.numel() for p in run.model.parameters())
    t = cfg.train
    log.info(
        f"world {layout.world} = TP {layout.tp_size} × DP {layout.dp_size}, ZeRO-{run.zero_stage}, "
        f"{t.precision}, device {layout.device_name}; {n_params / 1e6:.2f}M parameters per TP rank; global batch "
        f"{t.global_batch_size} = {t.micro_batch_size} × {layout.dp_size} DP × {run.grad_accum} accumulation"
    )
    return run


def build_engine(cfg: Config, ds_config: dict[str, Any], layout: parallel.Layout, source=None, generator=None):
    """Model (from `source`'s weights: train.init_from; with `generator`'s masked LM frozen beside it:
    objective.generator=frozen), optimizer, schedule and the DeepSpeed engine over them: (engine, scheduler)."""
    torch.manual_seed(cfg.train.seed)  # every rank builds the same full weights
    factory = parallel.layer_factory(layout.tp_size, cfg.model.initializer_range)
    if cfg.train.attention_backends != "torch":
        factory.attention_backends = tuple(n.strip() for n in cfg.train.attention_backends.split(","))
    blocks = None
    if compiles_blocks(cfg, layout.device):
        blocks = {"backend": cfg.train.compile_backend}
        if cfg.train.compile_mode != "default":
            blocks["mode"] = cfg.train.compile_mode
    tail = cfg.train.fused_vocab_tail == "true" or (cfg.train.fused_vocab_tail == "auto" and blocks is not None)
    model = ElectraPretrainer(cfg.model, cfg.objective, factory)
    if generator is not None:
        model.attach_generator(frozen_generator(generator, cfg, factory, layout.tp_rank))
    model = kernels.apply(model, blocks=blocks, vocab_tail=tail, flex=layout.device.type == "cuda")
    if source is not None:
        from electra_dist.training.init_from import initial_weights

        parallel.load_full_weights(model, initial_weights(model, source), layout.tp_size, layout.tp_rank)
    # dropout differs between data-parallel ranks, agrees within a tensor-parallel group (with
    # data.dp_split=batch each micro-batch reseeds it from its place in the global batch)
    torch.manual_seed(cfg.train.seed + 1 + layout.dp_rank)
    optimizer = build_optimizer(param_groups(model, cfg.optim.weight_decay), cfg.optim, layout.device)
    schedule = lr_schedule(optimizer, cfg.optim.warmup_steps, cfg.train.max_steps)
    engine, scheduler = parallel.build_engine(model, optimizer, schedule, ds_config)
    if model.frozen_generator is not None:  # where the engine put the model, in its dtype (ZeRO-3 moves no module)
        p = next(model.parameters())
        model.frozen_generator.to(device=layout.device, dtype=p.dtype if p.is_floating_point() else None)
    return engine, scheduler


def frozen_generator(src, cfg: Config, factory, tp_rank: int) -> ElectraGenerator:
    """model.generator_from's masked LM (`src`, interop.mlm.MlmSource) as an ElectraGenerator over its own
    embeddings, this TP rank's slices of its weights loaded, its vocabulary padded as the model's."""
    with torch.random.fork_rng(devices=[]):  # its fresh init is overwritten: the run's random stream stays
        gen = standalone_generator(src.cfg, factory, cfg.model.pad_vocab_multiple)
    shapes = {n: parallel.full_shape(p, factory.tp_size) for n, p in gen.named_parameters()}
    missing = sorted(set(shapes) - set(src.state))
    if missing:
        raise ValueError(f"model.generator_from: {src.path} has no weights for {', '.join(missing[:5])}")
    full = {n: fit_vocab_rows(t.float(), shapes[n]) for n, t in src.state.items() if n in shapes}
    with torch.no_grad():
        parallel.load_full_weights(gen, full, factory.tp_size, tp_rank)
    gen.source = {"path": src.path, "checksum": src.checksum}  # what checkpoints record
    return gen


def compiles_blocks(cfg: Config, device: torch.device) -> bool:
    """train.compile: true, false, or auto = on GPU (where fusing pays), off on CPU."""
    return cfg.train.compile == "true" or (cfg.train.compile == "auto" and device.type == "cuda")


def build_loader(cfg: Config, special: SpecialIds, layout: parallel.Layout):
    from electra_dist.data.loader import LoaderSettings, PretrainLoader

    mlm = cfg.objective.kind == "mlm"
    settings = LoaderSettings(
        seq_len=cfg.train.seq_len,
        micro_batch_size=cfg.train.micro_batch_size,
        special=special,
        mask_prob=cfg.objective.mask_prob,
        mask_fraction=0.8 if mlm else cfg.objective.mask_token_fraction,
        random_fraction=0.1 if mlm else 0.0,
        vocab_size=cfg.model.vocab_size,
        seed=cfg.train.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        on_corrupt=cfg.data.on_corrupt,
    )
    grad_accum = max(1, cfg.train.global_batch_size // (cfg.train.micro_batch_size * layout.dp_size))
    return PretrainLoader(
        cfg.data.shards,
        settings,
        layout.dp_rank,
        layout.dp_size,
        num_workers=cfg.data.num_workers,
        dp_split=cfg.data.dp_split,
        pin_memory=layout.device.type == "cuda",
        grad_accum=grad_accum,
    )
