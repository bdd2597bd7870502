"""Benchmarks: `electra-dist bench data` (loading + masking throughput) and `bench train` (training steps)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from electra_dist.data.loader import LoaderSettings, PretrainLoader, resolve_shards
from electra_dist.data.vocab import SpecialIds
from electra_dist.training.flops import peak_tflops


@dataclass
class DataBench:
    workers: int
    batches: int
    seconds: float
    tokens: int  # non-pad tokens delivered
    positions: int  # batch × seq_len

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def per_worker(self) -> float:
        return self.tokens_per_second / max(1, self.workers)

    def line(self) -> str:
        return (
            f"workers={self.workers} batches={self.batches} {self.seconds:.2f}s "
            f"{self.tokens_per_second / 1e3:,.0f}k tokens/s ({self.per_worker / 1e3:,.0f}k per worker, "
            f"{self.tokens / max(1, self.positions):.1%} non-pad)"
        )


def bench_data(
    shards: str,
    workers: int = 1,
    micro_batch: int = 64,
    batches: int = 200,
    warmup: int = 10,
    mask_prob: float = 0.15,
    shuffle_buffer: int = 1000,
    seed: int = 0,
) -> DataBench:
    urls, manifest = resolve_shards(shards)
    if manifest is None:
        raise ValueError(f"{shards}: bench data needs a shard directory with a manifest (for seq len and specials)")
    special = SpecialIds(**manifest["tokenizer"]["special"])
    settings = LoaderSettings(
        seq_len=manifest["seq_len"],
        micro_batch_size=micro_batch,
        special=special,
        mask_prob=mask_prob,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
    )
    it = iter(PretrainLoader(urls, settings, num_workers=workers))
    for _ in range(warmup):
        next(it)
    tokens = 0
    start = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        tokens += int(b.tokens)
    seconds = time.perf_counter() - start
    return DataBench(workers, batches, seconds, tokens, batches * micro_batch * manifest["seq_len"])


# ---- training step ------------------------------------------------------------------------


@dataclass
class TrainBench:
    name: str
    device: str
    precision: str
    batch: int  # sequences per optimizer step (micro batch × accumulation)
    seq_len: int
    steps: int
    seconds: float
    tokens: int  # non-pad tokens in the timed steps
    flops_per_token: float  # the useful work (generator head at masked positions only)
    peak_tflops: float | None
    peak_memory_gib: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def tflops(self) -> float:
        return self.tokens_per_second * self.flops_per_token / 1e12

    @property
    def mfu(self) -> float | None:
        return self.tflops / self.peak_tflops if self.peak_tflops else None

    def line(self) -> str:
        mfu = f", MFU {self.mfu:.1%}" if self.mfu is not None else ""
        return (
            f"{self.name:<20} {self.tokens_per_second:>12,.0f} tokens/s  {self.tflops:8.3f} TFLOP/s{mfu}  "
            f"peak memory {self.peak_memory_gib:.2f} GiB  ({self.steps} steps, {self.seconds:.2f}s)"
        )


def sample_shards(seq_len: int) -> str:
    """Real shards of the built-in sample text at `seq_len` (built once, cached in the temp dir)."""
    import tempfile
    from pathlib import Path

    from electra_dist.commands import SAMPLE
    from electra_dist.data.shards import build_shards
    from electra_dist.data.tokenizer import train_tokenizer

    root = Path(tempfile.gettempdir()) / "electra-dist-bench"
    tok, shards = root / "tokenizer", root / f"shards-{seq_len}-full"  # as `shards build` packs by default
    if not (tok / "spm.model").is_file():
        train_tokenizer([str(SAMPLE)], 8000, tok, lowercase=True)
    if not (shards / "manifest.json").is_file():
        build_shards(
            [str(SAMPLE)], tok, seq_len, shards, samples_per_shard=1000, workers=1, progress=False, overwrite=True
        )
    return str(shards)


def real_batches(shards: str, seq_len: int, micro_batch: int, mask_prob: float, count: int) -> list:
    """`count` micro-batches exactly as training's loader makes them (padding, masking, slots)."""
    urls, manifest = resolve_shards(shards)
    if manifest is not None and manifest["seq_len"] != seq_len:
        raise ValueError(f"--shards {shards} were built for seq len {manifest['seq_len']}, not --seq-len {seq_len}")
    special = SpecialIds(**manifest["tokenizer"]["special"]) if manifest else SpecialIds()
    settings = LoaderSettings(
        seq_len=seq_len, micro_batch_size=micro_batch, special=special, mask_prob=mask_prob, seed=0
    )
    it = iter(PretrainLoader(urls, settings, num_workers=0))
    return [next(it) for _ in range(count)]


def _time_steps(step, steps: int, warmup: int, device) -> float:
    import torch

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _peak_memory(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def bench_train(
    flavor: str,
    seq_len: int,
    micro_batch: int,
    precision: str = "fp32",
    steps: int = 10,
    warmup: int = 3,
    baseline: str | None = None,
    compile: bool = False,
    overrides: list[str] | None = None,
    shards: str | None = None,
    grad_accum: int = 1,
    deepspeed: dict | None = None,
    after=None,
) -> list[TrainBench]:
    """Full optimizer steps (forward, backward, clip, optimizer; `grad_accum` micro-batches each) on
    real shards, padded as training sees them: the trainer's own DeepSpeed engine built from the JSON
    training uses (`deepspeed`, default configs/zero2.json: ZeRO-2, bf16 with fp32 accumulation) and
    stepped by the trainer's functions, and optionally transformers' ElectraForMaskedLM +
    ElectraForPreTraining as users compose them (SDPA, autocast, fused AdamW on GPU) on the very same
    batches. `after(step)`: called with our timed step function before it is freed (gpu-check profiles
    the engine it already built)."""
    import torch

    from electra_dist import parallel
    from electra_dist.training.build import compiles_blocks
    from electra_dist.training.flops import flops_per_token

    cfg = _bench_config(flavor, seq_len, micro_batch, grad_accum, precision, compile, overrides or [])
    batches = real_batches(
        shards or sample_shards(seq_len), seq_len, micro_batch, cfg.objective.mask_prob, (warmup + steps) * grad_accum
    )
    timed_tokens = int(sum(b.tokens for b in batches[warmup * grad_accum :]))
    layout = parallel.setup(1)
    device, name = layout.device, layout.device_name
    peak = peak_tflops(name, precision)
    fpt = flops_per_token(cfg.model, seq_len, cfg.objective.mask_prob)
    results = []

    def result(label: str, seconds: float) -> TrainBench:
        # fmt: off
        return TrainBench(label, name, precision, micro_batch * grad_accum, seq_len, steps, seconds, timed_tokens,
                          fpt, peak, _peak_memory(device))
        # fmt: on

    try:
        ours = _our_step(cfg, batches, grad_accum, layout, deepspeed)
        results.append(
            result(
                "electra_dist" + ("+compile" if compiles_blocks(cfg, device) else ""),
                _time_steps(ours, steps, warmup, device),
            )
        )
        if after is not None:
            after(ours)
        del ours  # frees our model and optimizer before the baseline is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if baseline == "hf":
            hf_step = _hf_step(cfg, batches, grad_accum, device, precision)
            results.append(result("hf", _time_steps(hf_step, steps, warmup, device)))
    finally:
        parallel.destroy()
    return results


def _bench_config(flavor, seq_len, micro_batch, grad_accum, precision, compile, overrides):
    from electra_dist.config import Config

    return Config.build(
        flavor,
        [
            f"train.seq_len={seq_len}",
            f"model.max_position_embeddings={max(512, seq_len)}",
            f"train.micro_batch_size={micro_batch}",
            f"train.global_batch_size={micro_batch * grad_accum}",
            f"train.precision={precision}",
            f"train.compile={'true' if compile else 'auto'}",
            *overrides,
        ],
    )


def _our_step(cfg, batches, grad_accum: int, layout, deepspeed: dict | None):
    """One optimizer step exactly as training runs it: the trainer's model, optimizer, schedule and
    DeepSpeed engine (training.build.build_engine) from `deepspeed` (None: training's JSON), stepped by
    engine_step."""
    import itertools

    from electra_dist import parallel
    from electra_dist.commands import training_deepspeed_json

    if deepspeed is None:
        deepspeed = training_deepspeed_json()[0]
    from electra_dist.training.build import build_engine
    from electra_dist.training.step import engine_step, grad_norm_flags

    ds = parallel.resolve_deepspeed_config(cfg, deepspeed, layout.dp_size, "bench")
    engine, _ = build_engine(cfg, ds, layout)
    stream = itertools.cycle(batches)

    flags = grad_norm_flags(cfg.train.precision, parallel.zero_stage(ds))  # as train.py steps it

    def step():
        engine_step(engine, stream, grad_accum, layout.device, **flags)

    return step


def _hf_models(cfg, device):
    """transformers' ElectraForMaskedLM (generator) and ElectraForPreTraining (discriminator) of the config's
    shapes, sharing their embeddings as ELECTRA does."""
    import torch
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

    m = cfg.model

    def hf_config(enc):
        return ElectraConfig(
            vocab_size=m.vocab_size,
            embedding_size=m.embedding_size,
            hidden_size=enc.hidden_size,
            num_hidden_layers=enc.num_layers,
            num_attention_heads=enc.num_heads,
            intermediate_size=enc.intermediate_size,
            max_position_embeddings=m.max_position_embeddings,
            hidden_dropout_prob=m.dropout,
            attention_probs_dropout_prob=m.attention_dropout,
            attn_implementation="sdpa",
        )

    torch.manual_seed(0)
    gen = ElectraForMaskedLM(hf_config(m.generator)).to(device)
    disc = ElectraForPreTraining(hf_config(m.discriminator)).to(device)
    disc.electra.embeddings = gen.electra.embeddings  # shared token/position/type embeddings + LayerNorm
    return gen, disc


def _hf_step(cfg, batches, grad_accum: int, device, precision: str):
    """transformers' ELECTRA pre-training as users compose it: two models sharing the embeddings,
    the generator's MLM loss over its full logits with -100 labels, Gumbel sampling, and
    ElectraForPreTraining's loss, total = gen + 50 · disc; torch AdamW (fused on GPU)."""
    import itertools

    import torch

    gen, disc = _hf_models(cfg, device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")
    params = list({id(p): p for p in [*gen.parameters(), *disc.parameters()]}.values())
    opt = torch.optim.AdamW(
        params,
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
        **({"fused": True} if device.type == "cuda" else {}),
    )
    stream = itertools.cycle(batches)

    def step():
        for _ in range(grad_accum):
            b = next(stream).to(device)
            masked = b.masked_positions
            with autocast:
                g = gen(
                    input_ids=b.input_ids,
                    attention_mask=b.attention_mask,
                    token_type_ids=b.token_type_ids,
                    labels=b.original_ids.masked_fill(~masked, -100),
                )
                with torch.no_grad():
                    logits = g.logits[masked].float()
                    u = torch.rand_like(logits)
                    sampled = (logits - torch.log(-torch.log(u + 1e-9) + 1e-9)).argmax(-1)
                    disc_input = b.original_ids.masked_scatter(masked, sampled)
                    disc_labels = (disc_input != b.original_ids).long()
                d = disc(
                    input_ids=disc_input,
                    attention_mask=b.attention_mask,
                    token_type_ids=b.token_type_ids,
                    labels=disc_labels,
                )
                loss = (g.loss + 50.0 * d.loss) / grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step
