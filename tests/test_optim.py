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
    assert all(
        n.endswith("bias") or "norm" in n.lower() or "LayerNorm" in n
        for n in (names[id(p)] for p in no_decay["params"])
    )
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


def test_flops_per_token_matches_the_design():
    from electra_dist.config import Config
    from electra_dist.training.flops import flops_per_token, peak_tflops

    large = Config.from_name("electra-large")
    f = flops_per_token(large.model, 512, 0.25)
    assert abs(f / 1e9 - 2.17) < 0.01
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0 and peak_tflops("cpu", "fp32") is None


def test_the_gpu_optimizer_is_torch_fused_adamw_and_fusedadam_falls_back_once(monkeypatch, tmp_path, logged):
    """On CUDA the default is torch's AdamW(fused=True) (no build); optim.implementation=deepspeed asks
    for FusedAdam and, where it cannot be had, says so once and uses torch's. (CPU here: the device is
    only named "cuda"; torch's fused AdamW runs on CPU tensors too.)"""
    import torch

    from electra_dist import parallel
    from electra_dist.config import OptimConfig
    from electra_dist.training import optim

    params = [torch.nn.Parameter(torch.randn(4, 4))]
    cuda = torch.device("cuda")
    opt = optim.build_optimizer([{"params": params}], OptimConfig(), cuda)
    assert logged == []  # nothing to say
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"]
    assert not optim.build_optimizer([{"params": params}], OptimConfig(), torch.device("cpu")).defaults["fused"]

    def unavailable(groups, **kw):
        raise RuntimeError("not prebuilt, and CUDA_HOME=/usr is not a CUDA toolkit")

    monkeypatch.setattr(parallel, "fused_adam", unavailable)
    lines = logged
    for _ in range(3):  # every model a process builds (bench, gpu-check) asks again: said once
        opt = optim.build_optimizer([{"params": params}], OptimConfig(implementation="deepspeed"), cuda)
        assert type(opt) is torch.optim.AdamW and opt.defaults["fused"]
    assert lines == [
        "electra-dist: DeepSpeed FusedAdam unavailable: not prebuilt, and CUDA_HOME=/usr is not a CUDA "
        "toolkit; using torch AdamW(fused=True)"
    ]


def test_a_failed_fusedadam_build_is_not_tried_again_in_this_environment(monkeypatch, tmp_path):
    import deepspeed.ops.adam
    import torch

    from electra_dist.parallel import engine

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert engine.fused_adam_problem() == "no CUDA device"  # this machine: CPU only, nothing prebuilt

    class Broken:
        def __init__(self, *a, **kw):
            raise RuntimeError("Error building extension 'fused_adam': nvcc fatal: Unsupported gpu architecture")

    monkeypatch.setattr(engine, "fused_adam_problem", lambda: None)  # as on a GPU node, before the first try
    monkeypatch.setattr(deepspeed.ops.adam, "FusedAdam", Broken)
    with pytest.raises(RuntimeError, match="its build failed"):
        engine.fused_adam([{"params": [torch.nn.Parameter(torch.ones(1))]}], lr=1.0)
    monkeypatch.undo()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    problem = engine.fused_adam_problem()
    assert problem.startswith("its build failed here before (RuntimeError: Error building extension 'fused_adam'")
    assert str(tmp_path / "fused_adam.failed") in problem
