"""ELECTRA, all of it: shared embeddings, generator (MLM), discriminator, and the pre-training loss.

Replaced-token detection (Clark et al., 2020): the generator fills masked positions by
Gumbel-max sampling; the discriminator labels EVERY non-pad token original (0) or replaced (1).
Loss = generator_weight · L_mlm + λ · L_disc with λ = 50. Names follow Hugging Face's
ELECTRA wherever a weight has a counterpart there, so export is a renaming.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from electra_dist.config import EncoderConfig, ModelConfig, ObjectiveConfig
from electra_dist.data.batch import Batch
from electra_dist.model import tail
from electra_dist.model.layers import Encoder, LayerFactory
from electra_dist.model.modern import ModernEncoder, modern_blocks


class ElectraEmbeddings(nn.Module):
    """Token + position + token-type embeddings and their LayerNorm: shared by both models."""

    def __init__(self, cfg: ModelConfig, factory: LayerFactory, padded_vocab: int):
        super().__init__()
        # the table's padding depends on the TP size (pad_vocab_multiple × TP): its draw comes from its own
        # seed, so that every weight drawn after it is the same for any TP size
        seed = int(torch.randint(0, 2**62, (), device="cpu"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.word_embeddings = factory.vocab_embedding(padded_vocab, cfg.embedding_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.modern = cfg.architecture == "modern"
        if self.modern:  # ModernBERT: rotary positions in attention, no segments, a bias-free norm
            self.LayerNorm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps, bias=False)
            return
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.embedding_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.embedding_size)
        self.LayerNorm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        for emb in (self.position_embeddings, self.token_type_embeddings):
            nn.init.normal_(emb.weight, std=cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        if self.modern:
            return self.dropout(self.LayerNorm(self.word_embeddings(input_ids)))
        S = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:S]
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))  # (B, S, E)


class EmbeddingDelta(nn.Module):
    """Gradient-disentangled embedding sharing (GDES; He et al., 2021, DeBERTa-v3): the discriminator embeds
    with stop-gradient(shared) + Δ, one Δ per shared table (word, position, type, LayerNorm), Δ = 0 at the
    start (so the start is the tied model). The generator's MLM loss alone moves the shared tables; RTD's
    gradient reaches Δ only, so the two losses no longer pull the same embeddings apart ("tug-of-war")."""

    def __init__(self, shared: ElectraEmbeddings):
        super().__init__()
        for name, p in shared.named_parameters():
            delta = nn.Parameter(torch.zeros_like(p))
            for attr in ("tensor_model_parallel", "partition_dim", "partition_stride"):  # a TP shard like p
                if hasattr(p, attr):
                    setattr(delta, attr, getattr(p, attr))
            self.register_parameter(name.replace(".", "__"), delta)

    def merged(self, shared: ElectraEmbeddings, detach: bool = True) -> dict[str, torch.Tensor]:
        return {
            name: (p.detach() if detach else p) + getattr(self, name.replace(".", "__"))
            for name, p in shared.named_parameters()
        }

    def forward(self, shared: ElectraEmbeddings, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None):
        return torch.func.functional_call(shared, self.merged(shared), (input_ids, token_type_ids))


class _Tower(nn.Module):
    """Shared embeddings → own projection (when widths differ) → own encoder."""

    def __init__(self, cfg: ModelConfig, enc: EncoderConfig, embeddings: ElectraEmbeddings, factory: LayerFactory):
        super().__init__()
        self.embeddings = embeddings  # the very same module (and Parameters) in both towers
        self.embeddings_project: nn.Module = nn.Identity()  # no parameters: the state dict is unchanged
        if cfg.embedding_size != enc.hidden_size:
            self.embeddings_project = nn.Linear(cfg.embedding_size, enc.hidden_size)
            _init_linear(self.embeddings_project, cfg.initializer_range)
        self.embeddings_delta: EmbeddingDelta | None = None  # GDES (the discriminator only)
        shape = (enc.num_layers, enc.hidden_size, enc.num_heads, enc.intermediate_size, cfg.dropout,
                 cfg.attention_dropout, cfg.layer_norm_eps, factory)  # fmt: skip
        self.encoder: nn.Module
        if cfg.architecture == "modern":
            blocks = modern_blocks(
                *shape, cfg.global_every, cfg.local_window, cfg.rope_theta_global, cfg.rope_theta_local
            )
            self.encoder = ModernEncoder(blocks, enc.hidden_size, cfg.layer_norm_eps)
        else:
            self.encoder = Encoder(*shape)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        padded: bool | None = None,
    ) -> torch.Tensor:
        if self.embeddings_delta is not None:
            x = self.embeddings_delta(self.embeddings, input_ids, token_type_ids)
        else:
            x = self.embeddings(input_ids, token_type_ids)
        x = self.embeddings_project(x)
        return self.encoder(x, attention_mask, padded)  # (B, S, H)


class ElectraGenerator(_Tower):
    """A small MLM whose output layer is tied to the shared word embeddings."""

    def __init__(self, cfg: ModelConfig, embeddings: ElectraEmbeddings, factory: LayerFactory, padded_vocab: int):
        super().__init__(cfg, cfg.generator, embeddings, factory)
        self.factory = factory
        self.generator_predictions = nn.Module()
        self.generator_predictions.dense = nn.Linear(cfg.generator.hidden_size, cfg.embedding_size)
        self.generator_predictions.LayerNorm = nn.LayerNorm(
            cfg.embedding_size, eps=cfg.layer_norm_eps, bias=cfg.architecture != "modern"
        )  # modern: ModernBERT's prediction head, bias-free like all its norms
        _init_linear(self.generator_predictions.dense, cfg.initializer_range)
        lo, hi = factory.vocab_range(padded_vocab)
        self.generator_lm_head_bias = factory.vocab_bias(padded_vocab)
        # Padding rows of the vocabulary are never predicted nor sampled.
        self.has_vocab_padding = hi > cfg.vocab_size
        self.register_buffer("vocab_padding", torch.arange(lo, hi) >= cfg.vocab_size, persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        positions: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
        padded: bool | None = None,
    ) -> torch.Tensor:
        """Logits over this rank's vocab shard: (B·P, V_local) at `index` (B×P positions), (N, V_local)
        at `positions` (bool B×S), else (B, S, V_local)."""
        h = self.encode(input_ids, attention_mask, token_type_ids, padded)
        if index is not None:  # the head runs only at the masked slots; a gather, static shapes
            h = h.gather(1, index[..., None].expand(-1, -1, h.shape[-1])).reshape(-1, h.shape[-1])
        elif positions is not None:
            h = h[positions]  # (N, Hg)
        h = self.generator_predictions.LayerNorm(F.gelu(self.generator_predictions.dense(h)))
        logits = self.factory.lm_logits(h, self.embeddings.word_embeddings.weight, self.generator_lm_head_bias)
        if self.has_vocab_padding:
            logits = logits.masked_fill(self.vocab_padding, float("-inf"))
        return logits


class ElectraDiscriminator(_Tower):
    """The encoder we keep, with the replaced-token-detection head: dense → gelu → dense(1)."""

    def __init__(self, cfg: ModelConfig, embeddings: ElectraEmbeddings, factory: LayerFactory, gdes: bool = False):
        super().__init__(cfg, cfg.discriminator, embeddings, factory)
        if gdes:
            self.embeddings_delta = EmbeddingDelta(embeddings)
        h = cfg.discriminator.hidden_size
        self.discriminator_predictions = nn.Module()
        self.discriminator_predictions.dense = nn.Linear(h, h)
        self.discriminator_predictions.dense_prediction = nn.Linear(h, 1)
        for layer in (self.discriminator_predictions.dense, self.discriminator_predictions.dense_prediction):
            _init_linear(layer, cfg.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        padded: bool | None = None,
    ) -> torch.Tensor:
        h = self.encode(input_ids, attention_mask, token_type_ids, padded)
        head = self.discriminator_predictions
        return head.dense_prediction(F.gelu(head.dense(h))).squeeze(-1)  # (B, S)

    def fold_embedding_delta(self) -> None:
        """GDES → plain tables for the discriminator on its own (fine-tuning): the shared tables become
        shared + Δ IN PLACE (the generator, sharing them, is not to be used after this) and Δ goes."""
        if self.embeddings_delta is not None:
            with torch.no_grad():
                shared = dict(self.embeddings.named_parameters())
                for name, total in self.embeddings_delta.merged(self.embeddings).items():
                    shared[name].copy_(total)
            self.embeddings_delta = None


@dataclass
class PretrainOutput:
    loss: torch.Tensor  # generator_weight · generator_loss + λ · discriminator_loss
    generator_loss: torch.Tensor
    discriminator_loss: torch.Tensor
    replaced: torch.Tensor  # (B, S) bool: the discriminator's labels
    stats: dict[str, torch.Tensor]  # detached counts for metrics (summed, not averaged)
    discriminator_logits: torch.Tensor | None = None  # (B, S); None for the MLM objective


class ElectraPretrainer(nn.Module):
    """Generator + discriminator over shared embeddings, trained jointly with one loss."""

    def __init__(
        self,
        cfg: ModelConfig,
        objective: ObjectiveConfig | None = None,
        factory: LayerFactory | None = None,
    ):
        """A plain model: the fused Gumbel kernel, the fused vocabulary tail and compiled encoder blocks are
        applied from outside, by `kernels.apply` (what the trainer's engine build does)."""
        super().__init__()
        self.cfg = cfg
        self.objective = objective or ObjectiveConfig()
        self.factory = factory or LayerFactory(cfg.initializer_range)
        self.padded_vocab = cfg.padded_vocab_size(self.factory.tp_size)
        embeddings = ElectraEmbeddings(cfg, self.factory, self.padded_vocab)
        self.discriminator: ElectraDiscriminator | None
        self.generator: ElectraGenerator | None
        # objective.generator=frozen: a masked LM outside the module tree (no gradient, not in the optimizer,
        # the state dict or ZeRO's partitions), attached by `attach_generator`; the discriminator owns its embeddings
        self.frozen_generator: ElectraGenerator | None = None
        if self.objective.generator == "frozen":
            self.generator = None
            self.discriminator = ElectraDiscriminator(cfg, embeddings, self.factory)
        elif self.objective.kind == "mlm":
            # the BERT-style baseline: ONE encoder of the discriminator's size with the MLM head
            mlm = dataclasses.replace(cfg, generator=cfg.discriminator)
            self.generator = ElectraGenerator(mlm, embeddings, self.factory, self.padded_vocab)
            self.discriminator = None
        else:
            self.generator = ElectraGenerator(cfg, embeddings, self.factory, self.padded_vocab)
            self.discriminator = ElectraDiscriminator(
                cfg, embeddings, self.factory, gdes=self.objective.embedding_sharing == "gdes"
            )
        # the Gumbel sampling temperature: a 0-dim fp32 tensor that the trainer sets each step (a schedule changes
        # it without recompiling a graph, as a float would); a CPU scalar works beside tensors on any device
        self.temperature = torch.tensor(float(self.objective.temperature), device="cpu")
        self.scores_fn = tail.gumbel_scores  # the Gumbel noise: kernels.apply may put its compiled kernel here
        self.vocab_tail_fn = None  # the generator's fused vocabulary tail, where kernels.apply sets one
        self.compiled = None  # kernels.CompiledBlocks, where kernels.apply compiled the encoder blocks

    @property
    def embeddings(self) -> ElectraEmbeddings:
        return (self.generator if self.generator is not None else self.discriminator).embeddings

    def attach_generator(self, generator: ElectraGenerator) -> None:
        """objective.generator=frozen: `generator` (already loaded) fills the masked positions, in inference mode.
        It is kept outside the module tree, so parameters(), state_dict() and the optimizer never see it;
        `.to()` and the dtype casts reach it through `_apply`."""
        rows, ours = (
            generator.embeddings.word_embeddings.weight.shape[0],
            self.embeddings.word_embeddings.weight.shape[0],
        )
        if generator.factory.tp_size != self.factory.tp_size or rows != ours:
            raise ValueError(f"a frozen generator of {rows} vocabulary rows per rank for a model of {ours}")
        generator.requires_grad_(False).eval()
        self.__dict__["frozen_generator"] = generator  # not nn.Module.__setattr__: not a submodule

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.frozen_generator is not None:
            self.frozen_generator._apply(fn, recurse)
        return self

    def _corrupter(self) -> ElectraGenerator:
        if self.generator is not None:
            return self.generator
        if self.frozen_generator is None:
            raise RuntimeError(
                "objective.generator=frozen: no generator attached (model.generator_from="
                f"{self.cfg.generator_from!r}); this model can be exported or fine-tuned, not pre-trained, as loaded"
            )
        return self.frozen_generator

    @property
    def encoder_tower(self) -> _Tower:
        """The tower kept for downstream use: the discriminator (ELECTRA) or the MLM encoder."""
        return self.discriminator if self.discriminator is not None else self.generator

    def forward(
        self,
        batch: Batch,
        masked_normalizer: torch.Tensor | float | None = None,
        token_normalizer: torch.Tensor | float | None = None,
    ) -> PretrainOutput:
        """One micro-batch as the loader makes it (data.batch.Batch): masked tokens, the originals, the masked
        positions as fixed slots (`masked_index` / `masked_weights`, B × P) and whether any row is padded,
        all known on the host, so the forward never asks the device.

        The Gumbel noise is a function of (sample id, position, token) (electra_dist.rng), so the result
        does not depend on how samples are spread over ranks. The losses are sums divided by
        `masked_normalizer` / `token_normalizer` (default: this batch's masked / non-pad token counts, i.e.
        means). The trainer passes the global-batch counts ÷ (DP size × micro-steps), so averaging over ranks
        and micro-steps gives exactly the loss of the whole global batch, however it is split.
        """
        obj = self.objective
        input_ids, original_ids, attention_mask = batch.input_ids, batch.original_ids, batch.attention_mask
        token_type_ids, masked_index, padded = batch.token_type_ids, batch.masked_index, batch.padded
        masked_weights = batch.masked_weights
        B, P = masked_index.shape
        weights = masked_weights.reshape(-1).float()
        # 1. Generator: MLM loss at the masked slots only (empty slots weigh 0).
        with torch.no_grad() if self.generator is None else contextlib.nullcontext():  # a frozen one: no graph
            gen_logits = self._corrupter()(
                input_ids, attention_mask, token_type_ids, index=masked_index, padded=padded
            )  # (B·P, V_local)
        targets = original_ids.gather(1, masked_index).reshape(-1)  # (B·P,)
        rows = batch.sample_ids[:, None].expand(B, P).reshape(-1)
        # 2. (with it) Sample replacements: Gumbel-max in fp32, no gradient into the generator.
        gen_sum, predicted, sampled = self._vocab_tail(gen_logits, targets, weights, rows, masked_index.reshape(-1))
        gen_loss = gen_sum / (masked_normalizer if masked_normalizer is not None else weights.sum().clamp(min=1))
        if self.discriminator is None:  # MLM baseline: that is the whole loss
            return _mlm_output(obj.generator_weight, predicted, targets, weights, gen_loss, attention_mask)
        with torch.no_grad():
            disc_input = original_ids.scatter(1, masked_index, sampled.view(B, P))  # empty slots rewrite the original
            replaced = disc_input != original_ids  # a sample equal to the original counts as original

        # 3. Discriminator: sigmoid BCE over every non-pad token ([CLS]/[SEP] included).
        disc_logits = self.discriminator(disc_input, attention_mask, token_type_ids, padded)  # (B, S)
        nonpad = attention_mask.bool()
        per_token = F.binary_cross_entropy_with_logits(disc_logits.float(), replaced.float(), reduction="none")
        n_tokens = nonpad.sum()
        disc_loss = (per_token * nonpad).sum() / (
            token_normalizer if token_normalizer is not None else n_tokens.clamp(min=1)
        )

        loss = obj.discriminator_weight * disc_loss
        if self.generator is not None:  # a frozen generator's MLM loss is a metric, not a term to train
            loss = obj.generator_weight * gen_loss + loss
        with torch.no_grad():
            pred = (disc_logits > 0) & nonpad
            rep = replaced & nonpad
            stats = {
                **_generator_stats(predicted, targets, weights),
                "tokens": n_tokens,
                "replaced": rep.sum(),
                "discriminator_correct": ((pred == rep) & nonpad).sum(),
                "true_positive": (pred & rep).sum(),
                "predicted_positive": pred.sum(),
            }
        return PretrainOutput(loss, gen_loss, disc_loss, replaced, stats, disc_logits)

    _vocab_tail = tail.generator_tail  # (weighted MLM loss sum, argmax predictions, samples): see tail.py

    def gumbel_sample(self, logits: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """argmax(logits / T + Gumbel noise) over the whole (possibly TP-sharded) vocabulary. The noise is
        counter-based, a function of (key, token id) with one key per row: each TP rank computes just its
        vocab slice and every TP size draws the same sample."""
        lo, hi = self.factory.vocab_range(self.padded_vocab)
        return self.factory.vocab_argmax(self.scores_fn(logits, keys, lo, hi, self.temperature))

    gumbel_scores = staticmethod(tail.gumbel_scores)


def _generator_stats(predicted: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> dict:
    filled = weights > 0
    return {"masked": filled.sum(), "generator_correct": ((predicted == targets) & filled).sum()}


def _mlm_output(
    generator_weight: float,
    predicted: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    loss: torch.Tensor,
    attention_mask: torch.Tensor,
) -> PretrainOutput:
    """The MLM objective's output: its loss is the whole loss; the discriminator's counts are zeros."""
    with torch.no_grad():
        zero = targets.new_zeros(())
        stats = {
            **_generator_stats(predicted, targets, weights),
            "tokens": attention_mask.sum(),
            "replaced": zero,
            "discriminator_correct": zero,
            "true_positive": zero,
            "predicted_positive": zero,
        }
    return PretrainOutput(
        generator_weight * loss, loss, loss.new_zeros(()), torch.zeros_like(attention_mask, dtype=torch.bool), stats
    )


def standalone_generator(shape: ModelConfig, factory: LayerFactory, pad_vocab_multiple: int) -> ElectraGenerator:
    """A generator over embeddings of its own, in `shape` (a frozen one: model.generator_from's), its vocabulary
    padded as the model's (`pad_vocab_multiple` × TP), so both index the same vocabulary shards."""
    shape = dataclasses.replace(shape, pad_vocab_multiple=pad_vocab_multiple)
    padded = shape.padded_vocab_size(factory.tp_size)
    generator = ElectraGenerator(shape, ElectraEmbeddings(shape, factory, padded), factory, padded)
    generator.cfg = shape  # its own widths (FLOPs, export)
    return generator


def _init_linear(layer: nn.Linear, std: float) -> None:
    nn.init.normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def fit_vocab_rows(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A vocabulary-sized tensor (word embeddings, LM bias, their GDES residual) padded for one TP size, fitted
    to another's padding (pad_vocab_multiple × TP): rows past the vocabulary are padding, never read;
    trimmed, or zero-padded. Other tensors come back as they are."""
    if t.shape == shape or t.shape[1:] != shape[1:]:
        return t
    return t[: shape[0]] if t.shape[0] >= shape[0] else torch.cat([t, t.new_zeros(shape[0] - t.shape[0], *t.shape[1:])])


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (shared ones counted once); works on the meta device."""
    return sum(p.numel() for p in module.parameters())
