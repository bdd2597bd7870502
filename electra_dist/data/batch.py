"""The batch contract between the loader and the model: one micro-batch, collated on the CPU.

Tensor fields go to the device (`to`); the rest is what the host knows without asking the device:
whether any row is padded, the sample keys (for error messages), the epoch and the dropout seed
of this slice of the global batch. The model's forward takes a Batch (on its device).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

TENSORS = (
    "input_ids",
    "original_ids",
    "attention_mask",
    "token_type_ids",
    "masked_positions",
    "masked_index",
    "masked_weights",
    "sample_ids",
)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, S) what the generator sees (masked)
    original_ids: torch.Tensor  # (B, S) before masking
    attention_mask: torch.Tensor  # (B, S) 1 for real tokens
    token_type_ids: torch.Tensor  # (B, S) 1 after the first [SEP]
    masked_positions: torch.Tensor  # (B, S) bool: where the generator's loss is taken
    masked_index: torch.Tensor  # (B, P) the masked positions as fixed slots (masked_slots)
    masked_weights: torch.Tensor  # (B, P) bool: False = an empty slot
    sample_ids: torch.Tensor  # (B,) int64: masking and Gumbel noise are functions of the sample (rng)
    padded: bool  # any row padded: known here, so the model never asks the device
    keys: list[str] = dataclasses.field(default_factory=list)  # the samples, for error messages
    epoch: int = 0
    dropout_seed: int | None = None  # the dropout of this slice of the global batch (data.dp_split=batch)

    @property
    def tokens(self) -> float:
        """Non-pad tokens (counted on the CPU, before the copy)."""
        return float(self.attention_mask.sum())

    @property
    def masked(self) -> float:
        return float(self.masked_positions.sum())

    def apply(self, fn) -> Batch:
        return dataclasses.replace(self, **{k: fn(getattr(self, k)) for k in TENSORS})

    def to(self, device: torch.device) -> Batch:
        return self.apply(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Batch:  # DataLoader(pin_memory=True) calls this
        return self.apply(lambda t: t.pin_memory())

    def rows(self, part: slice, dropout_seed: int | None = None) -> Batch:
        """Rows `part` as a batch of their own (their `padded` recomputed)."""
        b = dataclasses.replace(self.apply(lambda t: t[part]), keys=self.keys[part], dropout_seed=dropout_seed)
        b.padded = bool((b.attention_mask == 0).any())
        return b

    @classmethod
    def of(
        cls,
        masked,
        sample_ids: torch.Tensor,
        slots: int | None = None,
        token_type_ids: torch.Tensor | None = None,
        **host,
    ) -> Batch:
        """The batch of a masked (B, S) block (data.masking.MaskedBatch, made with these `sample_ids`): its
        masked positions as `slots` fixed slots each (None: as many as the fullest row has), `padded` read
        from its attention mask on the host. `host`: keys, epoch, dropout_seed."""
        index, weights = masked_slots(masked.masked_positions, slots)
        return cls(
            input_ids=masked.input_ids,
            original_ids=masked.original_ids,
            attention_mask=masked.attention_mask,
            token_type_ids=token_type_ids if token_type_ids is not None else torch.zeros_like(masked.input_ids),
            masked_positions=masked.masked_positions,
            masked_index=index,
            masked_weights=weights,
            sample_ids=sample_ids,
            padded=bool((masked.attention_mask == 0).any()),
            **host,
        )


def masked_slots(positions: torch.Tensor, slots: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked positions of each row as a fixed-shape gather index: (B, slots) positions in row
    order, padded with 0, and (B, slots) bool weights (False = an empty slot). Static shapes let the
    model gather by index instead of boolean indexing (no host sync, one compiled graph)."""
    counts = positions.sum(1)
    if slots is None:
        slots = max(1, int(counts.max()))
    elif int(counts.max()) > slots:
        raise ValueError(f"a row has {int(counts.max())} masked positions, more than its {slots} slots")
    order = torch.argsort((~positions).to(torch.int8), dim=1, stable=True)[:, :slots]
    weights = positions.gather(1, order)
    return order.masked_fill(~weights, 0), weights
