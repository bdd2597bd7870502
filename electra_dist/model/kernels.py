"""Fused paths, applied to a plain model from outside (`apply(model, gumbel=True, blocks={...},
vocab_tail=True)`, what the trainer's engine build does), each with the plain-torch path as fallback
and a parity test (tests/test_kernels.py).

What runs fused where:
- attention: `F.scaled_dot_product_attention` (layers.py) — flash / memory-efficient kernels on
  GPU; padding is a (B, 1, 1, S) boolean mask broadcast inside the kernel, never a materialized
  (B, H, S, S) one, and no mask at all when a batch has no padding;
- generator head and its cross-entropy only at the masked positions (electra.py), vocab-parallel
  under TP (megatron-core's vocab_parallel_cross_entropy);
- bias + GeLU, residual-add + LayerNorm: `torch.compile` of each encoder block
  (`blocks=`; `train.compile=auto` turns it on on GPU, where it pays, off on CPU). The
  first failure to compile (no Triton, a compiler bug) turns every block back to eager for the rest of
  the process, with one line saying why; Dynamo's recompile limit is raised to what a run needs (see
  `CompiledBlocks`), so no variant silently drops to eager;
- Gumbel sampling: the counter-based noise + log + scale as one compiled kernel (`gumbel=True`,
  what the trainer and `bench train` build): on 2 CPU cores 37 ms instead of 680 ms for 614
  masked rows × 30 592 tokens. If torch.compile cannot build it here, the plain path runs, with
  one warning;
- the modern block's local windows (model.architecture=modern): FlexAttention block masks through one
  compiled flex_attention (`flex=True`, what the trainer builds on GPU): the blocks outside the band are
  skipped, nothing S × S is materialised; SDPA's boolean band as the fallback and on CPU;
- optimizer: torch AdamW(fused=True) on GPU (electra_dist.training.optim); DeepSpeed FusedAdam with
  optim.implementation=deepspeed (torch's when that op cannot be built, said once).
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

ScoresFn = Callable[[torch.Tensor, torch.Tensor, int, int, float], torch.Tensor]


class Fused:
    """`plain`'s numbers from one compiled function; `plain` itself (for good, one line saying why) when
    torch.compile cannot build it on this machine."""

    def __init__(self, plain: Callable, name: str, dynamic: bool | None = True):
        self.plain, self.name = plain, name
        self.compiled = torch.compile(plain, dynamic=dynamic)
        self.fused = True

    def __call__(self, *args):
        if self.fused:
            try:
                return self.compiled(*args)
            except Exception as e:  # no C++/Triton toolchain, an unsupported backend, ...
                if not _compiler_failure(e):
                    raise
                self.fused = False
                log.info(f"{self.name} unavailable ({_cause(e)}); using the plain path")
        return self.plain(*args)


def vocab_tail(
    logits: torch.Tensor,
    targets: torch.Tensor,
    sample_ids: torch.Tensor,
    positions: torch.Tensor,
    temperature: torch.Tensor | float,
    stream: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The generator's whole vocabulary tail at TP=1, from its (B·P, V) logits in the model's dtype: per-row
    cross-entropy (fp32 math), the argmax prediction, and the Gumbel-max sample with counter-based noise
    — whose row keys (`rng.row_keys` of sample and position) are computed here too. The plain-torch
    meaning; compiled (`fused_vocab_tail`), Inductor reads the logits once per reduction and never writes an
    fp32 copy of them, nor of the Gumbel scores."""
    from electra_dist import rng

    x = logits.float()
    ce = torch.logsumexp(x, dim=-1) - x.gather(1, targets[:, None]).squeeze(1)
    with torch.no_grad():
        keys = rng.row_keys(sample_ids, positions, stream)
        u = rng.uniform(keys, torch.arange(x.shape[1], device=x.device))
        sampled = (x.detach() / temperature - torch.log(-torch.log(u + 1e-9) + 1e-9)).argmax(dim=-1)
        predicted = x.detach().argmax(dim=-1)
    return ce, predicted, sampled


@functools.cache
def fused_vocab_tail() -> Fused:
    """`vocab_tail` as one compiled function (forward and backward). Static shapes first, shape-generic after
    a change (dynamic=True makes the temperature a symbolic float, and Inductor's C++ backend then emits an
    integer shift by a float: a g++ error on CPU)."""
    return Fused(vocab_tail, "fused vocabulary tail", dynamic=None)


@functools.cache
def fused_gumbel_scores(plain: ScoresFn) -> Fused:
    """One compiled kernel per plain function, shared by every model built in this process."""
    return Fused(plain, "fused Gumbel kernel")


class CompiledBlocks:
    """Every encoder block's forward through one torch.compile, eager again for good after the first
    failure to compile.

    Variants: Dynamo compiles `Block.forward` once per tower width (generator, discriminator) × attention
    mask (None when nothing is padded, a tensor when something is) × grad mode (training, evaluation) —
    up to 8 for an ELECTRA run with evaluation — and again, shape-generic, when a batch shape first changes
    (the last, shorter evaluation batch). A training run with evaluation on the test shards compiles 7
    (tests/test_kernels.py counts them). Past `torch._dynamo.config.recompile_limit` (default 8) Dynamo
    silently runs eager, so the limit is raised to 4 per variant of every model this process builds
    (gpu-check builds Base, then Large)."""

    built_variants = 0  # over every model compiled in this process

    def __init__(self, towers: int, **kwargs):
        self.variants = towers * 2 * 2
        self.kwargs, self.eager = kwargs, False
        CompiledBlocks.built_variants += self.variants
        limit = 4 * CompiledBlocks.built_variants
        if torch._dynamo.config.recompile_limit < limit:
            torch._dynamo.config.recompile_limit = limit

    def wrap(self, module: nn.Module) -> None:
        compiled, eager = torch.compile(module._call_impl, **self.kwargs), module._call_impl

        def call(*args, **kwargs):
            if self.eager:
                return eager(*args, **kwargs)
            try:
                return compiled(*args, **kwargs)
            except Exception as e:  # no Triton, a compiler bug, ... — or the caller's own error
                if not _compiler_failure(e):
                    raise
                out = eager(*args, **kwargs)  # raises the caller's own error again: then it was not compiling
                self.eager = True
                log.info(
                    f"compiling the encoder blocks failed ({_cause(e)}); they run eager from "
                    "here (train.compile=false skips the attempt)"
                )
                return out

        module._compiled_call_impl = call  # what nn.Module.__call__ runs; parameter names are unchanged


def _compiler_failure(e: Exception) -> bool:
    """Not out of memory, and not torch's SIGCHLD handler raising inside the call (a loader worker died)."""
    return not isinstance(e, torch.OutOfMemoryError) and "DataLoader worker" not in str(e)


def _cause(e: BaseException) -> str:
    """`Outer: innermost cause's first line` (Dynamo wraps the compiler's own error)."""
    root = e
    while (inner := root.__cause__ or getattr(root, "inner_exception", None)) is not None and inner is not root:
        root = inner
    first = (str(root).strip().splitlines() or [""])[0][:200]
    return type(e).__name__ + (f": {type(root).__name__}: {first}" if root is not e else f": {first}")


def compile_blocks(model: nn.Module, towers: int = 2, **kwargs) -> CompiledBlocks:
    """torch.compile every encoder block of `model` in place, with fallback (see CompiledBlocks)."""
    from electra_dist.model.layers import Block
    from electra_dist.model.modern import ModernBlock

    blocks = CompiledBlocks(towers, **kwargs)
    for module in model.modules():
        if isinstance(module, (Block, ModernBlock)):
            blocks.wrap(module)
    return blocks


class FlexBand:
    """The modern block's local attention through one compiled flex_attention; after the first failure to
    compile it (said once), eager for that call and SDPA's boolean band for every later forward."""

    def __init__(self, encoders: list[nn.Module]):
        from torch.nn.attention.flex_attention import flex_attention

        self.encoders, self.fused = encoders, Fused(flex_attention, "FlexAttention", dynamic=False)

    def __call__(self, *args):
        out = self.fused(*args)
        if not self.fused.fused:
            for encoder in self.encoders:
                encoder.flex = False
        return out


def use_flex(model: nn.Module) -> None:
    """Every modern encoder of `model` (its frozen generator's too) masks its local layers with FlexAttention
    block masks, computed by the compiled kernel."""
    from electra_dist.model.modern import ModernAttention, ModernEncoder

    modules = [*model.modules(), *(model.frozen_generator.modules() if model.frozen_generator is not None else [])]
    encoders = [m for m in modules if isinstance(m, ModernEncoder)]
    band = FlexBand(encoders)
    for m in modules:
        if isinstance(m, ModernAttention):
            m.flex_fn = band
    for encoder in encoders:
        encoder.flex = True


def apply(
    model: nn.Module,
    gumbel: bool = True,
    blocks: dict | None = None,
    vocab_tail: bool = False,
    flex: bool = False,
) -> nn.Module:
    """Put the fused paths into a plain ElectraPretrainer, in place: the Gumbel noise as one compiled kernel
    (`gumbel`), every encoder block through torch.compile (`blocks`: torch.compile's arguments, e.g.
    backend and mode; None: eager), the generator's vocabulary tail as one compiled function at TP=1
    (`vocab_tail`), the modern block's local windows as FlexAttention block masks (`flex`, for GPUs). Each
    has its plain path as fallback; the numbers are the plain model's."""
    if gumbel:
        model.scores_fn = fused_gumbel_scores(type(model).gumbel_scores)
    if vocab_tail:
        model.vocab_tail_fn = fused_vocab_tail()
    if blocks is not None:
        model.compiled = compile_blocks(model, towers=1 if model.discriminator is None else 2, **blocks)
    if flex and model.cfg.architecture == "modern":
        use_flex(model)
    return model
