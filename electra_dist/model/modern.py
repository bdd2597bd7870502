"""ModernBERT's encoder block (Warner et al., 2024) for model.architecture=modern.

Pre-normalisation with bias-free LayerNorms (none before the first layer's attention: the embeddings'
norm precedes it), rotary positions in fp32 (θ per layer kind: global / local), bias-free projections,
a GeGLU MLP, and local attention — each token sees the tokens within `local_window // 2` of it — in all
layers but every `global_every`-th, which attends globally; a final norm after the last layer. The same
numbers as transformers' ModernBertModel on the same weights (tests/test_modern.py).

Tensor parallelism goes through the layer factory as for the BERT block: the fused QKV is head-major
(heads, 3, head_dim), so a column shard holds whole heads; the GeGLU input projection is feature-major
(ffn, 2: value and gate side by side), so a column shard holds matching value and gate features.
Transformers' layouts ([q; k; v], [value; gate]) are one reshape away (interop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from electra_dist.model.layers import (
    LayerFactory,
    attend,
    attention_backends,
    feature_dropout,
    padding_mask,
)


def rotary(seq_len: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of rotary positions 0..S-1, (S, head_dim) fp32, as transformers' default RoPE."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    freqs = torch.arange(seq_len, device=device, dtype=torch.float)[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x · cos + rotate_half(x) · sin, in fp32, back in x's dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def local_band(seq_len: int, half_window: int, device: torch.device) -> torch.Tensor:
    """(S, S) bool: True where |i − j| ≤ half_window."""
    i = torch.arange(seq_len, device=device)
    return (i[:, None] - i[None, :]).abs() <= half_window


class ModernAttention(nn.Module):
    def __init__(
        self, hidden: int, heads: int, attention_dropout: float, factory: LayerFactory, half_window: int | None,
        theta: float,
    ):  # fmt: skip
        super().__init__()
        self.head_dim = hidden // heads
        self.heads, self.local_heads = heads, heads // factory.tp_size
        self.first_head = factory.tp_rank * self.local_heads
        self.attention_dropout, self.half_window, self.theta = attention_dropout, half_window, theta
        self.qkv = factory.column_linear(hidden, 3 * hidden, bias=False)
        self.dense = factory.row_linear(hidden, hidden, bias=False)
        self.dropout = nn.Dropout(attention_dropout)
        self.backends = attention_backends(factory.attention_backends)
        self.flex_fn = flex_attention  # eager; kernels.apply(model, flex=True) puts the compiled one here

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, S, _ = x.shape
        qkv = self.qkv(x).view(B, S, self.local_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (B, nh, S, hd)
        cos, sin = rotary(S, self.head_dim, self.theta, x.device)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        p = self.attention_dropout if self.training else 0.0
        if isinstance(mask, BlockMask):  # a local layer on GPU: FlexAttention skips the blocks outside the band
            out = self.flex_fn(q, k, v, None, mask)
        else:
            out = attend(q, k, v, mask, p, self.backends, self.heads, self.first_head)
        return self.dropout(self.dense(out.transpose(1, 2).reshape(B, S, self.local_heads * self.head_dim)))


class ModernBlock(nn.Module):
    """x += attention(norm(x)); x += W_out(drop(gelu(value) · gate)), value and gate from norm(x)."""

    def __init__(
        self, hidden: int, heads: int, ffn: int, dropout: float, attention_dropout: float, eps: float,
        factory: LayerFactory, first: bool, half_window: int | None, theta: float,
    ):  # fmt: skip
        super().__init__()
        self.attention_norm = nn.Identity() if first else nn.LayerNorm(hidden, eps=eps, bias=False)
        self.attention = ModernAttention(hidden, heads, attention_dropout, factory, half_window, theta)
        self.mlp_norm = nn.LayerNorm(hidden, eps=eps, bias=False)
        self.mlp_in = factory.column_linear(hidden, 2 * ffn, bias=False)  # (ffn, 2): value, gate per feature
        self.mlp_out = factory.row_linear(ffn, hidden, bias=False)
        self.dropout, self.ffn = dropout, ffn
        self.first_feature = factory.tp_rank * (ffn // factory.tp_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), mask)
        value, gate = self.mlp_in(self.mlp_norm(x)).unflatten(-1, (-1, 2)).unbind(-1)
        hidden = feature_dropout(F.gelu(value) * gate, self.dropout, self.ffn, self.first_feature, self.training)
        return x + self.mlp_out(hidden)


def modern_blocks(
    num_layers: int, hidden: int, heads: int, ffn: int, dropout: float, attention_dropout: float, eps: float,
    factory: LayerFactory, global_every: int, local_window: int, theta_global: float, theta_local: float,
) -> list[ModernBlock]:  # fmt: skip
    """Layer i attends globally when i % global_every == 0 (ModernBERT: layers 0, 3, 6, ...), else locally."""
    return [
        ModernBlock(
            hidden,
            heads,
            ffn,
            dropout,
            attention_dropout,
            eps,
            factory,
            i == 0,
            None if i % global_every == 0 else local_window // 2,
            theta_global if i % global_every == 0 else theta_local,
        )  # fmt: skip
        for i in range(num_layers)
    ]


class ModernEncoder(nn.Module):
    """ModernBERT's layers and final norm; the same call as layers.Encoder. The local layers' mask is made
    once per forward: the band as a boolean mask for SDPA, or — `flex`, which kernels.apply(model, flex=True)
    turns on for GPU runs — a FlexAttention block mask (nothing S × S is materialised, the blocks outside
    the band are skipped); with attention dropout, which FlexAttention does not do, the band for SDPA."""

    def __init__(self, layers: list[ModernBlock], hidden: int, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final_norm = nn.LayerNorm(hidden, eps=eps, bias=False)
        self.flex = False

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, padded: bool | None = None) -> torch.Tensor:
        mask = padding_mask(attention_mask, padded)
        local = self._local_mask(x, mask)
        for layer in self.layers:
            x = layer(x, local if layer.attention.half_window is not None else mask)
        return self.final_norm(x)

    def _local_mask(self, x: torch.Tensor, mask: torch.Tensor | None):
        windows = {layer.attention.half_window for layer in self.layers} - {None}
        S = x.shape[1]
        if not windows or S <= min(windows) + 1:  # no local layer, or its window holds the whole sequence
            return mask
        (half,) = windows
        dropout = self.training and any(layer.attention.attention_dropout > 0 for layer in self.layers)
        if self.flex and not dropout:
            return band_block_mask(S, half, mask, x.device)
        band = local_band(S, half, x.device)
        return band if mask is None else mask & band


def band_block_mask(seq_len: int, half_window: int, padding: torch.Tensor | None, device: torch.device) -> BlockMask:
    """|q − kv| ≤ half_window (and kv not padding, per row): FlexAttention's block-sparse form of the band."""
    from torch.nn.attention.flex_attention import create_block_mask

    if padding is None:
        return create_block_mask(lambda b, h, q, kv: (q - kv).abs() <= half_window, None, None, seq_len, seq_len,
                                 device=device)  # fmt: skip
    valid = padding[:, 0, 0, :]  # (B, S) keys that are tokens
    return create_block_mask(lambda b, h, q, kv: ((q - kv).abs() <= half_window) & valid[b, kv], valid.shape[0],
                             None, seq_len, seq_len, device=device)  # fmt: skip
