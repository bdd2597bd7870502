"""Fused paths against their plain-torch fallbacks (CPU here; the CUDA-only ones skip without a GPU)."""

import pytest
import torch

from electra_dist import rng
from electra_dist.model import ElectraPretrainer, kernels
from electra_dist.model.kernels import fused_gumbel_scores

from conftest import requires_cuda, tiny_config, train_here


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_compiled_blocks_and_gumbel_match_eager():
    cfg = tiny_config()
    torch.manual_seed(0)
    eager = ElectraPretrainer(cfg.model, cfg.objective)
    fused = kernels.apply(ElectraPretrainer(cfg.model, cfg.objective), blocks={})
    fused.load_state_dict(eager.state_dict())
    assert list(fused.state_dict()) == list(eager.state_dict())  # names unchanged: checkpoints interchange
    ids = torch.randint(5, 1000, (4, 64))
    am = torch.ones_like(ids)
    am[1, 40:] = 0
    torch.testing.assert_close(fused.discriminator(ids, am), eager.discriminator(ids, am), atol=1e-5, rtol=1e-5)
    keys = rng.row_keys(torch.arange(64), torch.zeros(64, dtype=torch.long), rng.GUMBEL)
    logits = torch.randn(64, 1024)
    plain = ElectraPretrainer.gumbel_scores(logits, keys, 0, 1024, 1.0)
    kernel = fused_gumbel_scores(ElectraPretrainer.gumbel_scores)
    torch.testing.assert_close(kernel(logits, keys, 0, 1024, 1.0), plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kernel(logits[:, 512:], keys, 512, 1024, 1.0), plain[:, 512:], atol=1e-5, rtol=1e-5)
    assert kernel.fused, "the compiled kernel ran (no fallback to the plain path)"


def test_no_padding_means_no_mask():
    """Packed batches without padding take SDPA's mask-free path (flash attention on GPU)."""
    from electra_dist.model.layers import Encoder, LayerFactory

    enc = Encoder(1, 32, 2, 64, 0.0, 0.0, 1e-12, LayerFactory())
    seen = []
    orig = enc.layers[0].forward
    enc.layers[0].forward = lambda x, mask: seen.append(mask) or orig(x, mask)
    x = torch.randn(2, 8, 32)
    enc(x, torch.ones(2, 8, dtype=torch.long))
    enc(x, torch.tensor([[1] * 8, [1] * 5 + [0] * 3]))
    assert seen[0] is None and seen[1].shape == (2, 1, 1, 8)


@requires_cuda
def test_fused_adam_matches_torch_adamw():
    from deepspeed.ops.adam import FusedAdam

    from electra_dist import parallel

    problem = parallel.fused_adam_problem()  # no CUDA toolkit to build it with, or its build failed here before
    if problem:
        pytest.skip(f"DeepSpeed FusedAdam: {problem}")

    torch.manual_seed(0)
    a = torch.nn.Linear(64, 64).cuda()
    b = torch.nn.Linear(64, 64).cuda()
    b.load_state_dict(a.state_dict())
    oa = torch.optim.AdamW(a.parameters(), lr=1e-3, eps=1e-6, weight_decay=0.01)
    ob = FusedAdam(b.parameters(), lr=1e-3, eps=1e-6, weight_decay=0.01, adam_w_mode=True)
    for _ in range(5):
        x = torch.randn(8, 64, device="cuda")
        for m, o in ((a, oa), (b, ob)):
            m(x).square().mean().backward()
            o.step()
            o.zero_grad()
    torch.testing.assert_close(a.weight, b.weight, atol=1e-5, rtol=1e-4)


@requires_cuda
def test_bf16_training_step_is_finite_and_close_to_fp32():
    cfg = tiny_config()
    torch.manual_seed(0)
    m = ElectraPretrainer(cfg.model, cfg.objective).cuda()
    ids = torch.randint(5, 1000, (4, 64), device="cuda")
    from electra_dist.data.batch import Batch
    from electra_dist.data.masking import mask_tokens
    from electra_dist.data.vocab import SpecialIds

    b = Batch.of(mask_tokens(ids.cpu(), SpecialIds(), 0.15, sample_ids=torch.arange(4)), torch.arange(4))
    b = b.to(torch.device("cuda"))
    ref = m(b).loss
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(b).loss
    assert torch.isfinite(out) and abs(out.item() - ref.item()) / ref.item() < 0.02


def test_fused_model_samples_the_same(tiny):
    torch.manual_seed(0)
    plain = ElectraPretrainer(tiny.model, tiny.objective)
    fused = kernels.apply(ElectraPretrainer(tiny.model, tiny.objective))
    fused.load_state_dict(plain.state_dict())
    logits = torch.randn(200, plain.padded_vocab)
    keys = rng.row_keys(torch.arange(200), torch.zeros(200, dtype=torch.long), rng.GUMBEL)
    assert torch.equal(fused.gumbel_sample(logits, keys), plain.gumbel_sample(logits, keys))


def test_block_compilation_falls_back_to_eager_once_with_one_line(logged):
    """A compiler that fails (no Triton, a compiler bug): the blocks run eager, same numbers, one line."""

    def broken(gm, inputs):
        raise RuntimeError("triton: no such compiler")

    cfg = tiny_config()
    torch.manual_seed(0)
    eager = ElectraPretrainer(cfg.model, cfg.objective).eval()
    lines = logged
    model = kernels.apply(ElectraPretrainer(cfg.model, cfg.objective), gumbel=False, blocks={"backend": broken}).eval()
    model.load_state_dict(eager.state_dict())
    ids = torch.randint(5, 1000, (2, 16))
    for _ in range(2):
        torch.testing.assert_close(
            model.discriminator(ids, torch.ones_like(ids)), eager.discriminator(ids, torch.ones_like(ids))
        )
    assert model.compiled.eager and len(lines) == 1, lines
    assert "compiling the encoder blocks failed" in lines[0] and "no such compiler" in lines[0]
    # the caller's own error is not a compiler failure: it surfaces, and compiling stays on
    other = kernels.apply(ElectraPretrainer(cfg.model, cfg.objective), gumbel=False, blocks={"backend": "eager"})
    try:
        other.discriminator(torch.randint(5, 1000, (2, 999)), torch.ones(2, 999, dtype=torch.long))
    except (IndexError, RuntimeError):
        pass
    assert not other.compiled.eager


@pytest.mark.slow
def test_a_training_run_with_evaluation_compiles_a_counted_number_of_variants(tmp_path, data):
    """The recompile limit covers what a run needs: 7 compiled variants of Block.forward for a training
    run with evaluation (gen/disc × train/eval, + eval's last shorter batch shape-generic, + its padded
    mask), all under the limit the model set, none dropped to eager (aot_eager: Inductor's kernels are
    not the point here)."""
    import torch._dynamo
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from electra_dist.model.kernels import CompiledBlocks
    from electra_dist.model.layers import Block

    torch._dynamo.reset()
    before = CompiledBlocks.built_variants
    r = train_here(
        tmp_path / "run",
        data,
        "train.compile=true",
        "train.compile_backend=aot_eager",
        "train.max_steps=4",
        "train.eval_interval=2",
        "train.eval_samples=20",
    )
    assert "eval loss" in r.stdout and "compiling the encoder blocks failed" not in r.stdout + r.stderr
    compiled = len(_debug_get_cache_entry_list(Block.forward.__code__))
    assert CompiledBlocks.built_variants - before == 8  # 2 towers × 2 masks × 2 grad modes
    assert compiled == 7, compiled
    assert compiled <= torch._dynamo.config.recompile_limit and torch._dynamo.config.recompile_limit >= 32


@pytest.mark.slow  # compiles forward and backward: 6 s with a warm Inductor cache, 93-127 s cold (a fresh CI machine)
def test_the_fused_vocabulary_tail_gives_the_step_by_step_numbers():
    """One compiled function for MLM loss, argmax and Gumbel sample (with its row keys) against the step-by-
    step tail: the same samples and predictions, the same loss and gradients (TP=1, counter-based noise)."""
    cfg = tiny_config(**{"model.vocab_size": 1000})
    torch.manual_seed(0)
    plain = kernels.apply(ElectraPretrainer(cfg.model, cfg.objective))
    fused = kernels.apply(ElectraPretrainer(cfg.model, cfg.objective), vocab_tail=True)
    fused.load_state_dict(plain.state_dict())
    from electra_dist.data.batch import Batch
    from electra_dist.data.masking import mask_tokens, max_predictions
    from electra_dist.data.vocab import SpecialIds

    ids = torch.randint(5, 1000, (4, 64), generator=torch.Generator().manual_seed(1))
    sample_ids = torch.arange(4) + 7
    b = Batch.of(mask_tokens(ids, SpecialIds(), 0.15, sample_ids=sample_ids), sample_ids, max_predictions(64, 0.15))
    a, f = plain(b), fused(b)
    assert torch.equal(a.replaced, f.replaced)  # the very same replacements
    assert a.stats["generator_correct"] == f.stats["generator_correct"] and a.stats["masked"] == f.stats["masked"]
    torch.testing.assert_close(f.generator_loss, a.generator_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.loss, a.loss, atol=1e-5, rtol=1e-5)
    a.loss.backward()
    f.loss.backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert fused.vocab_tail_fn.fused, "the compiled tail ran (no fallback)"


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_an_attention_backend_order_gives_the_same_numbers_eager_and_compiled():
    """train.attention_backends: SDPA kernels in order of preference (on GPU: cudnn,flash,efficient,math).
    Here every order that can run on CPU — the math kernel, CPU flash attention, an order whose first
    choices CPU lacks — against torch's own choice, padded and not, eager and under torch.compile."""
    from electra_dist.model.layers import Encoder, LayerFactory

    def encoder(order):
        factory = LayerFactory()
        factory.attention_backends = order
        torch.manual_seed(0)
        return Encoder(2, 32, 4, 64, 0.0, 0.0, 1e-12, factory).eval()

    x = torch.randn(2, 16, 32)
    am = torch.tensor([[1] * 16, [1] * 11 + [0] * 5])
    ref = encoder(())
    for order in [("math",), ("flash", "math"), ("cudnn", "flash", "efficient", "math")]:
        enc = encoder(order)
        assert enc.layers[0].attention.backends  # the order is taken
        compiled = torch.compile(enc, backend="aot_eager", fullgraph=True)
        for mask, padded in ((torch.ones_like(am), False), (am, True)):
            want = ref(x, mask, padded)
            torch.testing.assert_close(enc(x, mask, padded), want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(compiled(x, mask, padded), want, atol=1e-5, rtol=1e-5)
    from electra_dist.config import Config, ConfigError

    with pytest.raises(ConfigError, match="train.attention_backends: 'flash,fast'"):
        Config.build("debug", ["train.attention_backends=flash,fast"])


@pytest.mark.slow
def test_blocks_compiled_in_the_cuda_graph_mode_give_eager_numbers():
    """train.compile_mode=reduce-overhead (CUDA graphs of each compiled block on GPU; Inductor skips the
    graphs on CPU, so here it proves the mode builds, trains and matches eager — the graph replay itself
    is measured by gpu-check)."""
    cfg = tiny_config()
    torch.manual_seed(0)
    eager = ElectraPretrainer(cfg.model, cfg.objective)
    graphs = kernels.apply(
        ElectraPretrainer(cfg.model, cfg.objective), gumbel=False, blocks={"mode": "reduce-overhead"}
    )
    graphs.load_state_dict(eager.state_dict())
    ids = torch.randint(5, 1000, (4, 64))
    am = torch.ones_like(ids)
    for _ in range(2):
        a, b = eager.discriminator(ids, am, padded=False), graphs.discriminator(ids, am, padded=False)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        a.sum().backward()
        b.sum().backward()
    torch.testing.assert_close(
        graphs.discriminator.encoder.layers[0].output.weight.grad,
        eager.discriminator.encoder.layers[0].output.weight.grad,
        atol=1e-5,
        rtol=1e-4,
    )
    assert not graphs.compiled.eager
