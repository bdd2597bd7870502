"""Encoder building blocks: post-LN BERT attention, MLP and block, plus the layer factory.

Every layer that tensor parallelism splits is built through a `LayerFactory`. This file's
factory is plain torch (one rank); `electra_dist.parallel` supplies the megatron-core one, so
the model never imports torch.distributed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_BACKENDS = {
    "cudnn": "CUDNN_ATTENTION",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}


def attention_backends(names: tuple[str, ...] | list[str]) -> list:
    """SDPA backends by our names (train.attention_backends), in order of preference; the first that
    supports the inputs runs (torch.nn.attention.sdpa_kernel with set_priority)."""
    from torch.nn.attention import SDPBackend

    return [getattr(SDPBackend, ATTENTION_BACKENDS[n]) for n in names]


class LayerFactory:
    """Plain-torch layers (tensor-parallel size 1). A TP factory overrides every method.

    Shapes: a "column" layer's output and a "row" layer's input are split over TP ranks;
    the vocab embedding holds rows [vocab_start, vocab_end) of the padded vocabulary.
    """

    tp_size: int = 1
    tp_rank: int = 0
    attention_backends: tuple[str, ...] = ()  # SDPA kernels in order of preference; () = torch's own choice

    def __init__(self, init_std: float = 0.02):
        self.init_std = init_std

    def column_linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        return self._linear(in_features, out_features, bias)

    def row_linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        return self._linear(in_features, out_features, bias)

    def vocab_embedding(self, num_embeddings: int, embedding_dim: int) -> nn.Module:
        emb = _uninitialized(nn.Embedding, num_embeddings, embedding_dim)
        nn.init.normal_(emb.weight, std=self.init_std)
        return emb

    def vocab_bias(self, padded_vocab: int) -> nn.Parameter:
        """The generator's output bias over this rank's vocab shard."""
        lo, hi = self.vocab_range(padded_vocab)
        return nn.Parameter(torch.zeros(hi - lo))

    def vocab_range(self, padded_vocab: int) -> tuple[int, int]:
        per = padded_vocab // self.tp_size
        return self.tp_rank * per, (self.tp_rank + 1) * per

    def lm_logits(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Logits over this rank's vocab shard from replicated hidden states (tied weights)."""
        return F.linear(hidden, weight, bias)

    def vocab_cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-row cross-entropy; logits hold this rank's vocab shard, target global ids."""
        return F.cross_entropy(logits.float(), target, reduction="none")

    def vocab_argmax(self, scores: torch.Tensor) -> torch.Tensor:
        """Global argmax ids over the (sharded) vocab dimension."""
        return scores.argmax(dim=-1)

    def _linear(self, in_features: int, out_features: int, bias: bool) -> nn.Linear:
        # skip nn.Linear's own init: the RNG then advances exactly as megatron-core's
        # master-weight init does, so TP=1 and TP=N models start from identical weights
        layer = _uninitialized(nn.Linear, in_features, out_features, bias=bias)
        nn.init.normal_(layer.weight, std=self.init_std)
        if bias:
            nn.init.zeros_(layer.bias)
        return layer


def _uninitialized(cls: type[nn.Module], *args, **kwargs) -> nn.Module:
    """A module with allocated but uninitialized parameters, on the current default device."""
    device = torch.empty(0).device  # honours `with torch.device("meta"):`
    return cls(*args, device="meta", **kwargs).to_empty(device=device)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection.

    The QKV output is laid out head-major, (heads, 3, head_dim), so splitting it into TP
    column shards gives each rank whole heads with their q, k and v.
    """

    def __init__(self, hidden: int, heads: int, attention_dropout: float, factory: LayerFactory):
        super().__init__()
        self.head_dim = hidden // heads
        self.heads, self.local_heads = heads, heads // factory.tp_size
        self.first_head = factory.tp_rank * self.local_heads
        self.attention_dropout = attention_dropout
        self.qkv = factory.column_linear(hidden, 3 * hidden)
        self.dense = factory.row_linear(hidden, hidden)
        self.backends = attention_backends(factory.attention_backends)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, S, _ = x.shape
        qkv = self.qkv(x).view(B, S, self.local_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (B, nh, S, hd)
        p = self.attention_dropout if self.training else 0.0
        out = attend(q, k, v, mask, p, self.backends, self.heads, self.first_head)  # (B, nh, S, hd)
        return self.dense(out.transpose(1, 2).reshape(B, S, self.local_heads * self.head_dim))


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, p: float, backends: list,
    heads: int, first_head: int,
) -> torch.Tensor:  # fmt: skip
    """Scaled dot-product attention of this rank's heads (from `first_head` of `heads`) with dropout `p`: on
    CPU with dropout, masks independent of the tensor-parallel size (attention_with_all_heads_dropout);
    otherwise SDPA, through `backends` where the layer names some."""
    if p > 0 and q.device.type == "cpu":
        return attention_with_all_heads_dropout(q, k, v, mask, heads, first_head, p)
    if backends:
        with torch.nn.attention.sdpa_kernel(backends, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)


def attention_with_all_heads_dropout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, heads: int, first_head: int, p: float
) -> torch.Tensor:
    """Attention whose dropout mask is drawn for ALL `heads` and sliced to this rank's (from `first_head`):
    the same masks and the same RNG stream for any tensor-parallel size (on CPU, where SDPA materializes
    the probabilities anyway; on GPU the fused kernel draws its own). A query that may see no key (a padded
    row outside a local band) gets zeros, as SDPA gives it."""
    B, local_heads, S, head_dim = q.shape
    scores = (q @ k.transpose(-1, -2)) * head_dim**-0.5
    if mask is None:
        probs = scores.softmax(-1)
    else:
        probs = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1) * mask
    keep = torch.rand(B, heads, S, S, device=q.device)[:, first_head : first_head + local_heads]
    return (probs * (keep >= p) * (1.0 / (1.0 - p))).to(v.dtype) @ v


def feature_dropout(x: torch.Tensor, p: float, features: int, first: int, training: bool) -> torch.Tensor:
    """nn.Dropout over a column-parallel activation holding features [first, first + x.shape[-1]) of
    `features`: on CPU the mask is drawn for all of them and sliced, so TP=2 drops what TP=1 drops."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    keep = torch.rand(*x.shape[:-1], features, device=x.device)[..., first : first + x.shape[-1]]
    return x * (keep >= p) * (1.0 / (1.0 - p))


class Block(nn.Module):
    """Post-LN transformer block, as BERT and ELECTRA: x = LN(x + f(x)) twice."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        ffn: int,
        dropout: float,
        attention_dropout: float,
        eps: float,
        factory: LayerFactory,
    ):
        super().__init__()
        self.attention = SelfAttention(hidden, heads, attention_dropout, factory)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = factory.column_linear(hidden, ffn)
        self.output = factory.row_linear(ffn, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        return self.output_norm(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))


class Encoder(nn.Module):
    def __init__(
        self,
        num_layers: int,
        hidden: int,
        heads: int,
        ffn: int,
        dropout: float,
        attention_dropout: float,
        eps: float,
        factory: LayerFactory,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            Block(hidden, heads, ffn, dropout, attention_dropout, eps, factory) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, padded: bool | None = None) -> torch.Tensor:
        mask = padding_mask(attention_mask, padded)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def padding_mask(attention_mask: torch.Tensor | None, padded: bool | None) -> torch.Tensor | None:
    """(B, S) 1/0 → (B, 1, 1, S) bool, True = attend; None when nothing is padded (lets SDPA pick its
    fastest kernel). `padded` comes from the loader; None asks the device (a sync)."""
    if padded is None:
        padded = attention_mask is not None and not bool(attention_mask.all())
    return attention_mask[:, None, None, :].bool() if padded and attention_mask is not None else None
