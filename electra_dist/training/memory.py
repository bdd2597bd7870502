"""GPU memory of a training step, per rank, without a GPU: the activations autograd saves are MEASURED
(the model's real forward on fake tensors — shapes only, no memory — counting every tensor storage the
backward will need), the rest is ZeRO's arithmetic.

    weights      2 bytes × parameters (bf16 copy the step computes with)
    gradients    2 × parameters (bf16, transient) + 4 × parameters / DP (the fp32 accumulation partition)
    optimizer    12 × parameters / DP under ZeRO-1/2 (fp32 master + Adam's two moments), all 12 × on every
                 rank without ZeRO
    activations  what autograd saves for backward at this micro batch (flash attention: no S² scores)

`electra-dist params --memory` prints it, and the largest micro batch within a share of a GPU's memory:
how configs/electra_{base,large}.yaml's micro batches were checked (README, Performance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from electra_dist.config import Config
from electra_dist.data.batch import Batch


def fake_model(cfg: Config, mode, device: str = "cpu", dtype: torch.dtype = torch.bfloat16):
    """The model with every parameter and buffer a FakeTensor of `dtype` on `device`, built on the meta
    device first: ELECTRA-Large's weights cost nothing. A frozen generator is faked the same way."""
    from electra_dist.model import ElectraPretrainer

    with torch.device("meta"):
        model = ElectraPretrainer(cfg.model, cfg.objective)
    _fake_weights(model, mode, device, dtype)
    with mode:
        model.temperature = torch.ones((), device="cpu")  # the sampling temperature: a fake CPU scalar too
    if cfg.objective.generator == "frozen":
        model.attach_generator(_fake_weights(_meta_frozen_generator(cfg), mode, device, dtype))
    return model


def _fake_weights(model: torch.nn.Module, mode, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Every parameter and buffer of `model` replaced, in place, by a FakeTensor of `dtype` (floating) on `device`."""
    from torch import nn

    memo: dict[int, torch.Tensor] = {}
    with mode:
        for module in model.modules():
            for store, param in ((module._parameters, True), (module._buffers, False)):
                for name, t in list(store.items()):
                    if t is None:
                        continue
                    if id(t) not in memo:  # shared embeddings: one fake for one tensor
                        e = torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype, device=device)
                        memo[id(t)] = nn.Parameter(e, requires_grad=t.requires_grad) if param else e
                    store[name] = memo[id(t)]
    return model


def _meta_frozen_generator(cfg: Config):
    from electra_dist.interop.mlm import mlm_shape
    from electra_dist.model.electra import standalone_generator
    from electra_dist.model.layers import LayerFactory

    with torch.device("meta"):
        return standalone_generator(mlm_shape(cfg.model.generator_from), LayerFactory(), cfg.model.pad_vocab_multiple)


def fake_batch(cfg: Config, micro_batch: int, mode) -> Batch:
    """A loader-shaped batch (unpadded, masked slots) of fake tensors."""
    from electra_dist.data.masking import max_predictions

    S, P = cfg.train.seq_len, max_predictions(cfg.train.seq_len, cfg.objective.mask_prob)
    with mode:
        ids = torch.zeros(micro_batch, S, dtype=torch.long)
        return Batch(
            input_ids=ids,
            original_ids=ids,
            attention_mask=torch.ones(micro_batch, S, dtype=torch.long),
            token_type_ids=ids,
            masked_positions=torch.zeros(micro_batch, S, dtype=torch.bool),
            masked_index=torch.zeros(micro_batch, P, dtype=torch.long),
            masked_weights=torch.ones(micro_batch, P),
            sample_ids=torch.zeros(micro_batch, dtype=torch.long),
            padded=False,
        )


def activation_bytes(cfg: Config, micro_batch: int) -> int:
    """Bytes autograd saves in one training forward at `micro_batch` (bf16 weights, flash attention):
    every distinct storage the backward will read, parameters excluded."""
    import dataclasses

    from torch._subclasses.fake_tensor import FakeTensorMode

    # attention dropout 0: the fused (flash) kernel then runs on the fake CPU tensors as on a GPU, saving
    # O(S) per head; on CPU with dropout the model materializes the S×S scores instead
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention_dropout=0.0))
    mode = FakeTensorMode()
    model = fake_model(cfg, mode)
    params = {id(p.untyped_storage()) for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if id(storage) not in params:
            saved[id(storage)] = storage.nbytes()
        return t

    with mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        one = torch.ones(())
        model(fake_batch(cfg, micro_batch, mode), masked_normalizer=one, token_normalizer=one)
    return sum(saved.values())


@dataclass
class Memory:
    micro_batch: int
    weights: float  # GiB, each
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def estimate(cfg: Config, micro_batch: int, dp: int = 1, zero_stage: int = 2) -> Memory:
    """Per-rank memory of a bf16 training step (see the module docstring), in GiB."""
    from electra_dist.model import ElectraPretrainer, count_parameters

    with torch.device("meta"):
        n = count_parameters(ElectraPretrainer(cfg.model, cfg.objective))
    frozen = 0  # a frozen generator: its bf16 weights only (no gradient, no optimizer state, no saved activations)
    if cfg.objective.generator == "frozen":
        frozen = count_parameters(_meta_frozen_generator(cfg))
    shards = dp if zero_stage >= 1 else 1
    gib = 2**30
    return Memory(
        micro_batch,
        2 * (n + frozen) / gib,
        (2 * n + 4 * n / (dp if zero_stage >= 2 else 1)) / gib,
        12 * n / shards / gib,
        activation_bytes(cfg, micro_batch) / gib,
    )


def largest_micro_batch(cfg: Config, budget_gib: float, dp: int = 1, zero_stage: int = 2) -> Memory:
    """The largest power-of-two micro batch whose estimate fits in `budget_gib` (activations are linear in the
    micro batch: measured at 1 and 2, extrapolated, then measured again at the answer)."""
    one, two = estimate(cfg, 1, dp, zero_stage), estimate(cfg, 2, dp, zero_stage)
    per = two.activations - one.activations
    fixed = one.total - one.activations
    m = 1
    while fixed + one.activations + per * (2 * m - 1) <= budget_gib and m < 4096:
        m *= 2
    return estimate(cfg, m, dp, zero_stage)
