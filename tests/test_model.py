"""The ELECTRA model and loss, exactly as DESIGN.md: shared embeddings, labels, gradients, counts."""

import pytest
import torch
import torch.nn.functional as F

from electra_dist import rng
from electra_dist.config import Config
from electra_dist.data.batch import Batch
from electra_dist.data.masking import mask_tokens
from electra_dist.data.vocab import SpecialIds
from electra_dist.model import ElectraPretrainer, count_parameters

from conftest import tiny_config


def _batch(cfg, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = cfg.train.seq_len
    ids = torch.randint(5, cfg.model.vocab_size, (B, S), generator=g)
    ids[:, 0], ids[:, S // 2], ids[:, -1] = 2, 3, 3
    ids[1, 40:] = 0
    ids[1, 39] = 3
    sample_ids = torch.arange(B) + 100 * seed
    return Batch.of(mask_tokens(ids, SpecialIds(), cfg.objective.mask_prob, sample_ids=sample_ids), sample_ids)


def _run(model, b):
    return model(b)


def test_embeddings_are_the_same_parameter_objects(tiny):
    m = ElectraPretrainer(tiny.model, tiny.objective)
    g, d = m.generator.embeddings, m.discriminator.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        for pg, pd in zip(getattr(g, name).parameters(), getattr(d, name).parameters()):
            assert pg is pd
    # each tower has its own projection (embedding 32 → 32 generator needs none, 64 discriminator does)
    assert isinstance(m.discriminator.embeddings_project, torch.nn.Linear)
    assert isinstance(m.generator.embeddings_project, torch.nn.Identity)
    # parameters() counts the shared ones once
    names = [n for n, _ in m.named_parameters()]
    assert len(names) == len(set(id(p) for p in m.parameters()))


def test_generator_head_is_tied_and_masked_only(tiny):
    m = ElectraPretrainer(tiny.model, tiny.objective).eval()
    b = _batch(tiny)
    full = m.generator(b.input_ids, b.attention_mask, None)  # (B, S, V)
    at_mask = m.generator(b.input_ids, b.attention_mask, None, b.masked_positions)  # (N, V)
    assert at_mask.shape == (int(b.masked_positions.sum()), m.padded_vocab)
    torch.testing.assert_close(at_mask, full[b.masked_positions])
    # tied: the output matrix IS the word embedding matrix
    with torch.no_grad():
        m.embeddings.word_embeddings.weight[7].add_(1.0)
    assert not torch.allclose(m.generator(b.input_ids, b.attention_mask, None)[..., 7], full[..., 7])
    # padding rows of the vocabulary (1000 → 1024) are never predicted
    assert torch.isinf(full[..., 1000:]).all() and torch.isfinite(full[..., :1000]).all()


def test_loss_is_gen_plus_50_disc_and_matches_a_manual_computation(tiny):
    torch.manual_seed(0)
    m = ElectraPretrainer(tiny.model, tiny.objective).eval()
    b = _batch(tiny)
    out = _run(m, b)
    torch.testing.assert_close(out.loss, out.generator_loss + 50.0 * out.discriminator_loss)

    # generator: mean CE over masked positions
    logits = m.generator(b.input_ids, b.attention_mask, None, b.masked_positions)
    torch.testing.assert_close(out.generator_loss, F.cross_entropy(logits, b.original_ids[b.masked_positions]))
    # discriminator: BCE over non-pad tokens, summed / non-pad count, on the sampled input
    r, c = b.masked_positions.nonzero(as_tuple=True)  # the noise of each masked token: (its sample, its position)
    keys = rng.row_keys(b.sample_ids[r], c, rng.GUMBEL)
    sampled = m.gumbel_sample(logits, keys)
    disc_in = b.original_ids.clone()
    disc_in[b.masked_positions] = sampled
    labels = (disc_in != b.original_ids).float()
    assert torch.equal(out.replaced, labels.bool())
    d_logits = m.discriminator(disc_in, b.attention_mask)
    nonpad = b.attention_mask.bool()
    manual = F.binary_cross_entropy_with_logits(d_logits[nonpad], labels[nonpad], reduction="sum") / nonpad.sum()
    torch.testing.assert_close(out.discriminator_loss, manual)
    assert int(out.stats["tokens"]) == int(nonpad.sum())


def test_sample_equal_to_original_is_labeled_original(tiny, monkeypatch):
    m = ElectraPretrainer(tiny.model, tiny.objective)
    b = _batch(tiny)
    targets = b.original_ids.gather(1, b.masked_index).reshape(-1)  # every slot's original, in slot order
    half = torch.arange(targets.numel()) % 2 == 0
    fake = torch.where(half, targets, (targets + 1) % 1000)  # even slots: the original token; odd: another
    monkeypatch.setattr(m, "gumbel_sample", lambda logits, keys: fake)
    out = _run(m, b)
    filled = b.masked_weights.reshape(-1)
    labels_at_mask = out.replaced.gather(1, b.masked_index).reshape(-1)[filled]
    assert torch.equal(labels_at_mask, ~half[filled])
    assert not out.replaced[~b.masked_positions].any()
    assert int(out.stats["replaced"]) == int((~half[filled]).sum())


def test_gradients_of_both_losses_reach_shared_embeddings_and_disc_never_reaches_generator(tiny):
    m = ElectraPretrainer(tiny.model, tiny.objective)
    b = _batch(tiny)
    word = m.embeddings.word_embeddings.weight

    out = _run(m, b)
    out.generator_loss.backward()
    assert word.grad is not None and word.grad.abs().sum() > 0
    m.zero_grad(set_to_none=True)

    torch.manual_seed(3)
    out = _run(m, b)
    out.discriminator_loss.backward()
    assert word.grad is not None and word.grad.abs().sum() > 0
    for name in ("LayerNorm", "position_embeddings"):
        assert all(p.grad.abs().sum() > 0 for p in getattr(m.embeddings, name).parameters())
    gen_own = [p for n, p in m.generator.named_parameters() if not n.startswith("embeddings.")]
    assert gen_own and all(p.grad is None or p.grad.abs().sum() == 0 for p in gen_own)
    assert all(p.grad is not None for n, p in m.discriminator.named_parameters() if "encoder" in n)


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_training_steps_reduce_the_loss(tiny):
    torch.manual_seed(0)
    m = ElectraPretrainer(tiny.model, tiny.objective)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    b = _batch(tiny, B=8)
    losses = []
    for _ in range(40):
        out = _run(m, b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.generator_loss.item())
    assert losses[-1] < 0.85 * losses[0]


@pytest.mark.parametrize("flavor,millions", [("electra-small", 14), ("electra-base", 110), ("electra-large", 335)])
def test_discriminator_parameter_counts_match_the_paper(flavor, millions):
    cfg = Config.from_name(flavor, **{"model.pad_vocab_multiple": 1})
    assert cfg.model.vocab_size == 30522
    with torch.device("meta"):
        m = ElectraPretrainer(cfg.model, cfg.objective)
    n = count_parameters(m.discriminator)
    assert abs(n / 1e6 - millions) / millions < 0.04, n
    assert all(p.is_meta for p in m.parameters())


def test_padding_changes_nothing_but_its_rows():
    cfg = tiny_config(**{"model.vocab_size": 1000})
    m = ElectraPretrainer(cfg.model, cfg.objective)
    assert m.padded_vocab == 1024 and m.embeddings.word_embeddings.weight.shape[0] == 1024


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_counter_based_gumbel_follows_the_distribution_and_slices_by_vocab(tiny):
    m = ElectraPretrainer(tiny.model, tiny.objective)
    logits = torch.full((20000, m.padded_vocab), -1e9)
    logits[:, 10], logits[:, 11], logits[:, 12] = 0.0, torch.log(torch.tensor(2.0)), torch.log(torch.tensor(5.0))
    keys = rng.row_keys(torch.arange(20000), torch.zeros(20000, dtype=torch.long), rng.GUMBEL)
    s = m.gumbel_sample(logits, keys)
    freq = torch.bincount(s, minlength=13)[10:13].float() / s.numel()
    torch.testing.assert_close(freq, torch.tensor([1 / 8, 2 / 8, 5 / 8]), atol=0.015, rtol=0)
    assert s.dtype == torch.long
    # a vocab shard's noise is the same columns of the full noise: what TP relies on
    full = rng.uniform(keys[:5], torch.arange(0, 1024))
    torch.testing.assert_close(rng.uniform(keys[:5], torch.arange(512, 1024)), full[:, 512:])
    u = rng.uniform(keys)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01


def test_sample_ids_make_the_loss_independent_of_batch_composition(tiny):
    """The same samples give the same per-sample masks and samples in any batch split."""
    torch.manual_seed(0)
    m = ElectraPretrainer(tiny.model, tiny.objective).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (4, tiny.train.seq_len), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    sid = torch.tensor([11, 22, 33, 44])
    full = mask_tokens(ids, SpecialIds(), 0.15, sample_ids=sid)
    halves = [mask_tokens(ids[i : i + 2], SpecialIds(), 0.15, sample_ids=sid[i : i + 2]) for i in (0, 2)]
    assert torch.equal(full.input_ids, torch.cat([h.input_ids for h in halves]))
    out = m(Batch.of(full, sid))
    parts = [m(Batch.of(h, sid[i : i + 2])) for h, i in zip(halves, (0, 2))]
    assert torch.equal(out.replaced, torch.cat([p.replaced for p in parts]))


def test_gdes_starts_as_the_tied_model_and_keeps_rtd_gradients_off_the_shared_embeddings():
    """DeBERTa-v3's gradient-disentangled embedding sharing: the discriminator reads sg(shared) + Δ."""
    tied_cfg, gdes_cfg = tiny_config(), tiny_config(**{"objective.embedding_sharing": "gdes"})
    torch.manual_seed(0)
    gdes = ElectraPretrainer(gdes_cfg.model, gdes_cfg.objective)
    tied = ElectraPretrainer(tied_cfg.model, tied_cfg.objective)
    tied.load_state_dict({k: v for k, v in gdes.state_dict().items() if ".embeddings_delta." not in k})
    b = _batch(tied_cfg)
    torch.manual_seed(1)
    a = _run(gdes, b)
    torch.manual_seed(1)
    assert torch.equal(a.loss, _run(tied, b).loss)  # Δ = 0: the same model at the start

    a.discriminator_loss.backward()  # RTD: Δ and the discriminator move, never the shared tables
    delta = gdes.discriminator.embeddings_delta
    assert all(p.grad is None for p in gdes.embeddings.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in delta.parameters())
    gdes.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    _run(gdes, b).generator_loss.backward()  # MLM: the shared tables, never Δ
    assert gdes.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in delta.parameters())


def test_gdes_discriminator_exports_and_folds_as_its_summed_embeddings():
    from electra_dist.interop.hf import to_hf

    cfg = tiny_config(**{"objective.embedding_sharing": "gdes"})
    torch.manual_seed(0)
    m = ElectraPretrainer(cfg.model, cfg.objective).eval()
    with torch.no_grad():
        for p in m.discriminator.embeddings_delta.parameters():
            p.normal_(std=0.05)  # as after training
    b = _batch(cfg)
    with torch.no_grad():
        before = m.discriminator(b.original_ids, b.attention_mask)
    disc, gen = to_hf(m)
    V = cfg.model.vocab_size
    shared = m.embeddings.word_embeddings.weight[:V]
    assert torch.allclose(
        disc["electra.embeddings.word_embeddings.weight"],
        shared + m.discriminator.embeddings_delta.word_embeddings__weight[:V],
    )
    assert torch.equal(gen["electra.embeddings.word_embeddings.weight"], shared)  # the generator's own
    assert not any("delta" in k for k in [*disc, *gen])
    m.discriminator.fold_embedding_delta()  # fine-tuning's plain tables
    assert m.discriminator.embeddings_delta is None
    with torch.no_grad():
        assert torch.allclose(m.discriminator(b.original_ids, b.attention_mask), before, atol=1e-6)
