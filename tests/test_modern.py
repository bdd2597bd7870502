"""model.architecture=modern: ModernBERT's block — transformers' ModernBertModel's numbers on the same weights."""

from __future__ import annotations

import pytest
import torch
from test_frozen import bert_dir  # noqa: F401  (the fixture: a frozen BERT)

from electra_dist.model import ElectraPretrainer

from conftest import tiny_config


def modern_config(seq: int = 64, **kv):
    return tiny_config(
        **{
            "model.architecture": "modern",
            "model.embedding_size": 64,  # = the discriminator's width: ModernBERT has no projection
            "model.discriminator.num_layers": 4,  # global, local, local, global
            "model.max_position_embeddings": seq,
            "model.layer_norm_eps": 1e-5,
            "train.seq_len": seq,
            **kv,
        }
    )


def _drawn(model: torch.nn.Module) -> torch.nn.Module:
    """Every norm weight off 1 (a norm left out or misplaced shows)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower():
                p.add_(torch.randn_like(p) * 0.2)
    return model


def hf_modern(model: ElectraPretrainer):
    import transformers as t

    from electra_dist.interop.modernbert import modern_config_dict, modern_to_hf

    cfg = model.cfg
    config = t.ModernBertConfig(**modern_config_dict(cfg, cfg.discriminator))
    config._attn_implementation = "sdpa"
    hf = t.ModernBertModel(config).eval()
    hf.load_state_dict(modern_to_hf(model.state_dict(), "discriminator", cfg, cfg.discriminator), strict=True)
    return hf


@pytest.mark.slow  # transformers' ModernBERT import and forwards of up to 8192 tokens (ModernBERT's context): seconds
@pytest.mark.parametrize("seq,window", [(64, 16), (1024, 128), (8192, 128)])
def test_the_modern_discriminator_computes_what_transformers_modernbert_computes(seq, window):
    """Local layers (a window shorter than the sequence) and global ones, with and without padding: every
    hidden state of a non-pad token within 1e-5 of ModernBertModel's, fp32, CPU."""
    cfg = modern_config(seq, **{"model.local_window": window})
    torch.manual_seed(0)
    model = _drawn(ElectraPretrainer(cfg.model, cfg.objective)).eval()
    hf = hf_modern(model)
    ids = torch.randint(5, 1000, (2 if seq <= 1024 else 1, seq), generator=torch.Generator().manual_seed(1))
    for mask in (torch.ones_like(ids), torch.ones_like(ids).index_fill(1, torch.arange(seq * 5 // 8, seq), 0)):
        ids = ids.masked_fill(mask == 0, 0)
        with torch.no_grad():
            ours = model.discriminator.encode(ids, mask)
            theirs = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        keep = mask.bool()
        torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=1e-5)
    local = model.discriminator.encoder.layers[1].attention
    assert local.half_window == window // 2 and model.discriminator.encoder.layers[3].attention.half_window is None


def test_a_modernbert_checkpoint_reads_back_into_the_same_model():
    from electra_dist.interop.modernbert import modern_from_hf

    cfg = modern_config()
    torch.manual_seed(0)
    model = _drawn(ElectraPretrainer(cfg.model, cfg.objective))
    hf = hf_modern(model)
    back = modern_from_hf(hf.state_dict(), "discriminator", cfg.model.discriminator, model.padded_vocab)
    ours = {k: v for k, v in model.state_dict().items() if k in back}
    assert set(back) == set(ours)
    rows = cfg.model.vocab_size  # the rows past it are padding: transformers' table has none, read back as zeros
    assert [k for k in ours if not torch.equal(back[k][:rows], ours[k][:rows])] == []
    assert len(ours) == len([k for k in model.state_dict() if k.startswith("discriminator.")]) - 4  # RTD head's 4


MODERN = ["model.architecture=modern", "model.embedding_size=64", "model.local_window=16",
          "model.layer_norm_eps=1e-5", "model.discriminator.num_layers=4"]  # fmt: skip


@pytest.mark.slow
def test_a_modern_electra_with_a_frozen_bert_is_the_same_on_tp2_and_dp2_and_exports_as_modernbert(
    tmp_path,
    data,
    cli,
    bert_dir,  # noqa: F811  (the fixture imported above)
):
    """The modern block (heads and GeGLU features split over two processes) with a frozen BERT corrupting
    (its vocab-parallel head and sharded encoder under TP, outside ZeRO-3's partitions): TP=2 and DP=2 under
    ZeRO-3 each take one process's steps to 1e-5 — losses, the generator's accuracy, the replaced fraction;
    the final discriminator, exported, is a ModernBertModel with the trained model's hidden states."""
    import transformers as t
    from test_frozen import frozen

    from electra_dist.interop import load_model

    from conftest import EXACT, one_tp2_dp2

    runs = one_tp2_dp2(tmp_path, data, "--max-steps", "6", *EXACT, *MODERN, *frozen(bert_dir), "train.eval_interval=0")
    for layout in ("tp2", "dp2"):
        for key in ("loss/total", "acc/generator", "loss/generator", "discriminator/replaced_fraction"):
            a, b = [r[key] for r in runs["one"]], [r[key] for r in runs[layout]]
            assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5, (layout, key, a, b)

    assert cli("export", "--checkpoint", tmp_path / "tp2" / "final", "--out", tmp_path / "hf").returncode == 0
    hf = t.ModernBertModel.from_pretrained(tmp_path / "hf" / "discriminator", attn_implementation="sdpa").eval()
    model, _ = load_model(tmp_path / "tp2" / "final")
    ids = torch.randint(5, 1000, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.eval().discriminator.encode(ids, torch.ones_like(ids))
        torch.testing.assert_close(hf(input_ids=ids).last_hidden_state, ours, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "hf" / "discriminator" / "rtd_head.safetensors").is_file()


@pytest.mark.slow  # builds transformers' ModernBERT classes (their import: seconds)
@pytest.mark.parametrize("flavor", ["modern-base", "modern-large"])
def test_the_modern_flavors_are_modernbert_s_shapes(flavor):
    """The discriminator of modern-base / modern-large at ModernBERT's vocabulary has exactly the parameters of
    transformers' ModernBertModel of the exported config (149M / 395M, as published) plus the RTD head."""
    import transformers as t

    from electra_dist.config import Config
    from electra_dist.interop.modernbert import modern_config_dict

    cfg = Config.from_name(flavor, **{"model.vocab_size": 50368}).validate()
    with torch.device("meta"):
        ours = ElectraPretrainer(cfg.model, cfg.objective).discriminator
        theirs = t.ModernBertModel(t.ModernBertConfig(**modern_config_dict(cfg.model, cfg.model.discriminator)))
    head = sum(p.numel() for p in ours.discriminator_predictions.parameters())
    padding = (cfg.model.padded_vocab_size(1) - 50368) * cfg.model.embedding_size  # rows for TP shards
    n_ours = sum(p.numel() for p in ours.parameters()) - head - padding
    assert n_ours == sum(p.numel() for p in theirs.parameters())
    assert round(n_ours / 1e6) == {"modern-base": 149, "modern-large": 395}[flavor]


@pytest.mark.slow
def test_rtd_continues_from_a_modernbert_as_discriminator_and_corrupter(tmp_path, data, tok_dir):
    """`--init-from modernbert/ objective.generator=frozen model.generator_from=modernbert/` on a
    ModernBertForMaskedLM saved by transformers: the model takes its architecture and shape (local window,
    rotary θ, layer kinds), only the RTD head starts fresh, and it trains."""
    from test_frozen import frozen, save_mlm

    from electra_dist.config import Config
    from electra_dist.data.tokenizer import load_tokenizer

    from conftest import train_here

    d = save_mlm(tmp_path / "modernbert", "modernbert", vocab_size=load_tokenizer(tok_dir).vocab_size)
    r = train_here(
        tmp_path / "run", data, "--max-steps", "2", "--init-from", str(d), *frozen(d), "train.eval_interval=0"
    )
    assert "fresh: discriminator.discriminator_predictions\n" in r.stdout + "\n", r.stdout[-2000:]
    assert "model.architecture bert → modern" in r.stdout and "model.local_window 128 → 16" in r.stdout
    cfg = Config.from_yaml(tmp_path / "run" / "config.yaml")
    assert cfg.model.architecture == "modern" and cfg.model.discriminator.num_layers == 4


def _banded() -> tuple[ElectraPretrainer, torch.Tensor, torch.Tensor]:
    """A modern model whose window (16) is shorter than its sequence (64), and a batch with a padded row."""
    cfg = modern_config(64, **{"model.local_window": 16})
    torch.manual_seed(0)
    model = _drawn(ElectraPretrainer(cfg.model, cfg.objective)).eval()
    ids = torch.randint(5, 1000, (2, 64), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    return model, ids, mask


@pytest.mark.slow  # FlexAttention's eager reference path: seconds
def test_the_flexattention_band_gives_the_masked_sdpa_numbers():
    """The local layers' block-sparse FlexAttention mask (what runs on GPU) and the band as SDPA's boolean
    mask (CPU, or with attention dropout): the same hidden states, padded rows included (forward only:
    FlexAttention has no backward on CPU)."""
    model, ids, mask = _banded()
    encoder = model.discriminator.encoder
    outs, kinds = [], set()
    for flex in (True, False):
        encoder.flex = flex
        kinds.add(type(encoder._local_mask(torch.zeros(2, 64, 1), None)).__name__)
        with torch.no_grad():
            outs.append(model.discriminator.encode(ids, mask)[mask.bool()])
    assert kinds == {"BlockMask", "Tensor"}
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # a compile attempt: seconds
def test_flexattention_falls_back_to_the_sdpa_band_when_it_cannot_be_compiled(monkeypatch, logged):
    """What the trainer builds on GPU (kernels.apply(flex=True)) on a machine whose compiler is missing (a
    real one: Inductor cannot find its C++ compiler): said once, that forward eager, every later forward
    SDPA's band — the same numbers, and training goes on."""
    import torch._inductor.config as inductor

    from electra_dist.model import kernels

    model, ids, mask = _banded()
    with torch.no_grad():
        sdpa = model.discriminator.encode(ids, mask)[mask.bool()]
    torch._dynamo.reset()
    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/g++",))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    kernels.apply(model, gumbel=False, flex=True)
    encoder = model.discriminator.encoder
    assert encoder.flex
    with torch.no_grad():
        first = model.discriminator.encode(ids, mask)[mask.bool()]
        later = model.discriminator.encode(ids, mask)[mask.bool()]
    said = [line for line in logged if "FlexAttention unavailable" in line]
    assert len(said) == 1 and "C++ compiler" in said[0] and said[0].endswith("using the plain path"), said
    assert not encoder.flex and type(encoder._local_mask(torch.zeros(2, 64, 1), None)).__name__ == "Tensor"
    torch.testing.assert_close(first, sdpa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(later, sdpa, atol=1e-5, rtol=1e-5)
