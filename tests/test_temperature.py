"""The Gumbel sampling temperature as a schedule over training (Fast-ELECTRA anneals it from high to 1): its
values, its effect on the corruption, its record in the metrics, its resume."""

from __future__ import annotations

import math

import pytest
import torch

from electra_dist import rng
from electra_dist.config import Config, ConfigError
from electra_dist.data.batch import Batch
from electra_dist.data.masking import mask_tokens
from electra_dist.data.vocab import SpecialIds
from electra_dist.model import ElectraPretrainer
from electra_dist.tracking import read_metrics
from electra_dist.training.optim import temperature_at

from conftest import tiny_config, train_here


def test_each_schedule_goes_from_its_start_at_step_one_to_its_end_at_the_last():
    for shape in ("linear", "cosine", "exponential"):
        assert temperature_at(1, 11, 3.0, 1.0, shape) == 3.0 and temperature_at(11, 11, 3.0, 1.0, shape) == 1.0
        assert temperature_at(99, 11, 3.0, 1.0, shape) == 1.0  # past max_steps (a longer resume): the end
    assert temperature_at(6, 11, 3.0, 1.0, "linear") == 2.0  # halfway
    assert temperature_at(6, 11, 3.0, 1.0, "cosine") == pytest.approx(2.0)  # halfway too, slower at both ends
    assert temperature_at(2, 11, 3.0, 1.0, "cosine") > temperature_at(2, 11, 3.0, 1.0, "linear")
    assert temperature_at(6, 11, 4.0, 1.0, "exponential") == pytest.approx(2.0)  # geometric: √(4·1)
    assert temperature_at(6, 11, 3.0, 1.0, "constant") == 1.0  # objective.temperature throughout
    cfg = Config.build("debug", ["objective.temperature_schedule=linear", "objective.temperature_start=3"])
    assert cfg.objective.temperature_start == 3.0
    with pytest.raises(ConfigError, match=r"objective.temperature_schedule: 'step' is not one of"):
        Config.build("debug", ["objective.temperature_schedule=step"])
    with pytest.raises(ConfigError, match=r"objective.temperature_start: 0.0 must be > 0"):
        Config.build("debug", ["objective.temperature_start=0"])


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_a_higher_temperature_replaces_more_tokens_of_the_same_batch():
    """The generator's distribution flattens with T: on logits that favor the original token, the fraction
    sampled away from it grows with T; in the forward, the same batch at another temperature gets other
    replacements, and at the same temperature the very same ones (the noise is counter-based)."""
    cfg = tiny_config()
    torch.manual_seed(0)
    m = ElectraPretrainer(cfg.model, cfg.objective).eval()
    logits = torch.zeros(4000, m.padded_vocab)
    logits[:, 10] = 6.0  # the original token, far ahead at T = 1
    keys = rng.row_keys(torch.arange(4000), torch.zeros(4000, dtype=torch.long), rng.GUMBEL)
    away = []
    for t in (0.5, 1.0, 2.0, 4.0):
        m.temperature.fill_(t)
        away.append(float((m.gumbel_sample(logits, keys) != 10).float().mean()))
    assert away == sorted(away) and away[0] < 0.01 < 0.5 < away[-1], away
    # at T = 1 the exact softmax: P(not 10) = (V−1) / (V−1 + e⁶) over the 1000 real tokens
    assert away[1] == pytest.approx(999 / (999 + math.exp(6)), abs=0.02)
    ids = torch.randint(5, 1000, (4, 64), generator=torch.Generator().manual_seed(1))
    sid = torch.arange(4)
    b = Batch.of(mask_tokens(ids, SpecialIds(), 0.15, sample_ids=sid), sid)
    with torch.no_grad():  # what the discriminator reads (its logits): other samples at another temperature
        m.temperature.fill_(1.0)
        one = m(b).discriminator_logits
        m.temperature.fill_(0.01)
        cold = m(b).discriminator_logits
        m.temperature.fill_(1.0)
        assert torch.equal(m(b).discriminator_logits, one) and not torch.equal(cold, one)


@pytest.mark.slow
def test_the_schedule_is_logged_and_resumes_where_it_was(tmp_path, data):
    """objective/temperature per step follows the linear schedule 3 → 1 over 6 steps; a run resumed from its
    step-3 checkpoint logs the same temperatures and the same losses for steps 4-6."""
    import shutil

    args = ["--max-steps", "6", "train.save_interval=3", "train.keep_last=5", "model.dropout=0.1",
            "objective.temperature_schedule=linear", "objective.temperature_start=3",
            "train.eval_interval=0"]  # fmt: skip
    train_here(tmp_path, data, *args)
    straight = read_metrics(tmp_path / "metrics.jsonl")
    temps = [r["objective/temperature"] for r in straight]
    assert temps == pytest.approx([3.0, 2.6, 2.2, 1.8, 1.4, 1.0]), temps
    ckpts = tmp_path / "checkpoints"
    shutil.rmtree(ckpts / "step00000006")
    shutil.rmtree(tmp_path / "final")
    (ckpts / "latest").write_text("step00000003")
    r = train_here(tmp_path, data, *args)
    assert "resumed from" in r.stdout
    resumed = read_metrics(tmp_path / "metrics.jsonl")
    assert [x["step"] for x in resumed] == [1, 2, 3, 4, 5, 6]
    assert [x["objective/temperature"] for x in resumed] == temps
    assert [x["loss/total"] for x in resumed] == [x["loss/total"] for x in straight]
