"""The optimizer, schedule and FLOP accounting that training shares with fine-tuning and bench."""

import pytest


def test_lr_schedule_is_the_official_one():
    from electra_dist.training.optim import lr_multiplier

    assert lr_multiplier(0, 10, 100) == 0.0
    assert lr_multiplier(5, 10, 100) == pytest.approx(0.5 * 0.95)
    assert lr_multiplier(10, 10, 100) == pytest.approx(0.9)
    assert lr_multiplier(100, 10, 100) == 0.0


def test_no_weight_decay_on_layernorm_and_bias(tiny):
    from electra_dist.model import ElectraPretrainer
    from electra_dist.training.optim import param_groups

    m = ElectraPretrainer(tiny.model, tiny.objective)
    decay, no_decay = param_groups(m, 0.01)
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(n.endswith("weight") and "norm" not in n.lower() for n in (names[id(p)] for p in decay["params"]))
    assert all(n.endswith("bias") or "norm" in n.lower() or "LayerNorm" in n
               for n in (names[id(p)] for p in no_decay["params"]))
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


def test_flops_per_token_matches_the_design():
    from electra_dist.config import Config
    from electra_dist.training.flops import flops_per_token, peak_tflops

    large = Config.from_name("electra-large")
    f = flops_per_token(large.model, 512, 0.25)
    assert abs(f / 1e9 - 2.17) < 0.01
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0 and peak_tflops("cpu", "fp32") is None
