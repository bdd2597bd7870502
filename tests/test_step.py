"""The training step as the GPU wants it, proven on CPU: one graph with static shapes (no graph
break, no recompilation for new content), masked slots equal to boolean masking, FLOP accounting
equal to what torch's FlopCounterMode counts."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from electra_dist.config import Config
from electra_dist.data.batch import Batch, masked_slots
from electra_dist.data.masking import mask_tokens, max_predictions
from electra_dist.data.vocab import SpecialIds
from electra_dist.model import ElectraPretrainer
from electra_dist.training.flops import flops_per_sequence

from conftest import ROOT, one_rank, tiny_config


def _batch(cfg, seed: int, B: int = 4, pad_from: int | None = None) -> Batch:
    """A batch as the loader makes it: masked with sample ids, fixed slots, the `padded` flag."""
    S = cfg.train.seq_len
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, cfg.model.vocab_size, (B, S), generator=g)
    ids[:, 0], ids[:, S // 2], ids[:, -1] = 2, 3, 3
    if pad_from is not None:
        ids[1, pad_from:] = 0
        ids[1, pad_from - 1] = 3
    sample_ids = torch.arange(B) + 1000 * seed
    m = mask_tokens(ids, SpecialIds(), cfg.objective.mask_prob, sample_ids=sample_ids)
    return Batch.of(m, sample_ids, max_predictions(S, cfg.objective.mask_prob))


def test_masked_slots_hold_exactly_the_masked_positions_in_row_order():
    positions = torch.rand(6, 40, generator=torch.Generator().manual_seed(0)) < 0.2
    positions[2] = False
    index, weights = masked_slots(positions, 20)
    assert index.shape == weights.shape == (6, 20)
    for r in range(6):
        assert index[r][weights[r]].tolist() == positions[r].nonzero().flatten().tolist()
    assert (index[~weights] == 0).all()
    with pytest.raises(ValueError, match="more than its 2 slots"):
        masked_slots(positions, 2)
    assert max_predictions(128, 0.15) == 19 and max_predictions(512, 0.25) == 128


def test_fixed_slots_and_boolean_masking_give_the_same_losses(tiny):
    """The trainer's path (the loader's fixed number of slots, empty ones weighing 0) equals the losses
    taken at the boolean masked positions (as many slots as the fullest row has: none empty there)."""
    torch.manual_seed(0)
    m = ElectraPretrainer(tiny.model, tiny.objective).eval()
    b = _batch(tiny, 0, pad_from=40)
    tight = Batch.of(b, b.sample_ids)  # MaskedBatch's fields are the batch's own
    assert tight.masked_index.shape[1] == int(b.masked_positions.sum(1).max()) and tight.padded
    assert not b.masked_weights.all()  # the fixed slots have empty ones
    fast, exact = m(b), m(tight)
    for name in ("loss", "generator_loss", "discriminator_loss"):
        torch.testing.assert_close(getattr(fast, name), getattr(exact, name), rtol=1e-6, atol=1e-6)
    assert torch.equal(fast.replaced, exact.replaced)
    assert {k: int(v) for k, v in fast.stats.items()} == {k: int(v) for k, v in exact.stats.items()}
    logits = m.generator(b.input_ids, b.attention_mask, b.token_type_ids, b.masked_positions)
    ce = torch.nn.functional.cross_entropy(logits, b.original_ids[b.masked_positions])
    torch.testing.assert_close(fast.generator_loss, ce, rtol=1e-6, atol=1e-6)  # the boolean-mask MLM loss


def test_padded_and_unpadded_computation_give_the_same_losses(tiny):
    """The same sequences with padding (a key mask) and trimmed to their length with no mask at all
    (the flash path): the same per-sequence losses."""
    torch.manual_seed(0)
    m = ElectraPretrainer(tiny.model, tiny.objective).eval()
    b = _batch(tiny, 3, B=2, pad_from=40)
    padded = m(b)
    padded_row = m(b.rows(slice(1, 2)))
    # row 1 alone, trimmed to its 40 real tokens: no padding, no mask
    alone = b.rows(slice(1, 2))
    for k in ("input_ids", "original_ids", "attention_mask", "token_type_ids", "masked_positions"):
        setattr(alone, k, getattr(alone, k)[:, :40])
    alone.padded = False
    alone = m(alone)
    torch.testing.assert_close(alone.loss, padded_row.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone.discriminator_loss, padded_row.discriminator_loss, rtol=1e-5, atol=1e-5)
    assert torch.equal(alone.replaced, padded_row.replaced[:, :40])
    assert torch.isfinite(padded.loss)


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
@pytest.mark.parametrize("architecture", ["bert", "modern"])
def test_the_whole_training_step_is_one_graph_and_new_content_does_not_recompile(architecture):
    """Generator, Gumbel sampling, discriminator, both losses and backward under
    torch.compile(fullgraph=True): any graph break fails. Batches of new content (and new loss
    normalizers) run the same graph; only the padded / unpadded switch may add a second one. ModernBERT's
    block too (rotary, GeGLU, a local window shorter than the sequence)."""
    modern = {"model.architecture": "modern", "model.embedding_size": 64, "model.local_window": 16}
    cfg = tiny_config(**{"model.dropout": 0.1, **(modern if architecture == "modern" else {})})
    torch.manual_seed(0)
    model = ElectraPretrainer(cfg.model, cfg.objective).train()
    torch._dynamo.reset()
    step = torch.compile(model, fullgraph=True, backend="aot_eager")

    def run(batch, normalizers):  # tensors, as engine_step passes them: a float would be a constant of the graph
        masked, tokens = torch.tensor(normalizers).unbind()
        out = step(batch, masked_normalizer=masked, token_normalizer=tokens)
        out.loss.backward()
        assert torch.isfinite(out.loss) and model.discriminator.encoder.layers[0].attention.qkv.weight.grad is not None
        model.zero_grad(set_to_none=True)

    run(_batch(cfg, 1), (19.0, 256.0))
    with torch._dynamo.config.patch(error_on_recompile=True):
        model.temperature.fill_(1.7)  # a temperature schedule's next value
        run(_batch(cfg, 2), (18.5, 250.0))  # other tokens, other masks, other normalizers
    run(_batch(cfg, 3, pad_from=40), (19.0, 256.0))  # the padded variant: its own graph, once
    with torch._dynamo.config.patch(error_on_recompile=True):
        run(_batch(cfg, 4, pad_from=30), (17.0, 230.0))


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
@pytest.mark.parametrize(
    "flavor,extra",
    [("electra-small", []), ("electra-base", []), ("electra-large", []),
     ("electra-base", ["model.architecture=modern", "model.local_window=32"])],  # GeGLU, local + global layers
)  # fmt: skip
def test_flop_accounting_matches_torch_flop_counter(flavor, extra):
    """training.flops (what MFU is computed from) against FlopCounterMode over a real forward and
    backward of the flavor's shapes (seq 64 here; the model runs on the meta device)."""
    S, B = 64, 2
    cfg = Config.build(flavor, [f"train.seq_len={S}", *extra])
    with torch.device("meta"):
        model = ElectraPretrainer(cfg.model, cfg.objective)
    batch = _batch(cfg, 0, B=B).to(torch.device("meta"))
    with FlopCounterMode(display=False) as counter:
        model(batch).loss.backward()
    expected = B * flops_per_sequence(cfg.model, S, max_predictions(S, cfg.objective.mask_prob))
    counted = counter.get_total_flops()
    assert abs(counted - expected) / expected < 0.01, (counted, expected, counted / expected)


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_zero2_accumulates_bf16_gradients_in_fp32():
    """configs/zero2.json under bf16: gradients of the micro-batches are summed in fp32 partitions (ELECTRA-
    Large accumulates 64 micro-batches a step: in bf16 the late ones would round away), through DeepSpeed's
    data_types.grad_accum_dtype; the step still trains."""
    import json

    from electra_dist import parallel
    from electra_dist.training.build import build_engine
    from electra_dist.training.step import engine_step

    cfg = tiny_config(
        **{
            "train.precision": "bf16",
            "train.micro_batch_size": 4,
            "train.global_batch_size": 8,
            "optim.warmup_steps": 0,
        }
    )
    ds_json = json.loads((ROOT / "configs" / "zero2.json").read_text())
    assert ds_json["data_types"] == {"grad_accum_dtype": "fp32"}
    assert json.loads((ROOT / "configs" / "zero3.json").read_text())["data_types"] == {"grad_accum_dtype": "fp32"}
    with one_rank():
        layout = parallel.setup(1)
        ds = parallel.resolve_deepspeed_config(cfg, ds_json, layout.dp_size)
        engine, _ = build_engine(cfg, ds, layout)
        assert next(engine.module.parameters()).dtype == torch.bfloat16
        assert (
            engine.optimizer.gradient_accumulation_dtype == torch.float32 and engine.optimizer.use_separate_grad_accum
        )
        before = engine.module.discriminator.encoder.layers[0].output.weight.detach().clone()
        result = engine_step(engine, iter([_batch(cfg, 1), _batch(cfg, 2)]), 2, layout.device)
        assert float(result.nonfinite) == 0 and result.tokens > 0
        assert not torch.equal(before, engine.module.discriminator.encoder.layers[0].output.weight)


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["electra-base", "electra-large"])
def test_forward_and_backward_read_nothing_back_to_the_host(flavor):
    """Under FakeTensorMode every value is unknown: any read-back of a device value (.item(), bool(t),
    nonzero, a data-dependent shape) raises. The step's forward and backward, padded and unpadded, at
    Base and Large width in bf16, run through: nothing in them waits on the GPU. Device "cuda" where
    torch is built with CUDA (a GPU node, a CUDA wheel), else fake CPU tensors (torch's CPU build has no
    CUDA device to fake); the model's code takes no device branch in forward/backward. The fused Gumbel
    kernel is its plain function compiled (same ops), so the plain path stands for it here."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

    from electra_dist.training.memory import fake_model

    device = "cuda" if torch.backends.cuda.is_built() else "cpu"
    cfg = Config.build(flavor, ["train.seq_len=512"])
    mode = FakeTensorMode()
    model = fake_model(cfg, mode, device)
    for pad_from in (None, 300):
        batch = _batch(cfg, 1, B=2, pad_from=pad_from).apply(lambda t: mode.from_tensor(t).to(device))
        with mode:
            one = torch.ones((), device=device)
            out = model(batch, masked_normalizer=one, token_normalizer=one)
            out.loss.backward()
            assert out.loss.device.type == device and out.loss.shape == ()
            grad = model.discriminator.encoder.layers[-1].output.weight.grad
            assert grad is not None and grad.dtype == torch.bfloat16
            model.zero_grad(set_to_none=True)
    with mode, pytest.raises(DataDependentOutputException):  # the detector works: asking the device raises
        model.discriminator(batch.input_ids, batch.attention_mask)  # `padded` not given: the tower asks


@pytest.mark.slow
def test_the_memory_estimate_behind_the_micro_batch_defaults(cli):
    """Activations measured on fake tensors grow linearly with the micro batch and agree with the
    textbook 34·s·b·h bytes per layer (flash attention); ELECTRA-Large's default micro batch (32) plans
    for under 60 % of an 80 GiB GPU with ZeRO-2 over 8 ranks, and 64 would fit too (README)."""
    from electra_dist.training.memory import activation_bytes, estimate, largest_micro_batch

    cfg = Config.build("electra-large", [])
    a1, a2, a4 = (activation_bytes(cfg, m) for m in (1, 2, 4))
    assert abs((a4 - a2) - 2 * (a2 - a1)) <= 0.01 * (a4 - a2)
    m = cfg.model
    textbook = sum(34 * 512 * 32 * enc.hidden_size * enc.num_layers for enc in (m.discriminator, m.generator))
    large = estimate(cfg, cfg.train.micro_batch_size, dp=8)
    assert cfg.train.micro_batch_size == 32 and 0.8 < large.activations * 2**30 / textbook < 1.3, large
    assert large.total < 0.6 * 80
    assert largest_micro_batch(cfg, 0.6 * 80, dp=8).micro_batch == 64
    r = cli("params", "--config", "electra-base", "--memory")
    assert r.returncode == 0 and "micro batch   32 × seq 512, bf16, ZeRO-2 over DP 8:" in r.stdout, r.stdout
