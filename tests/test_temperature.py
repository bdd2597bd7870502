"""The Gumbel sampling temperature as a schedule over training (Fast-ELECTRA anneals it from high to 1): its
values and its effect on the corruption (its record in the metrics and its exact resume: test_frozen.py)."""

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
from electra_dist.training.optim import temperature_at

from conftest import tiny_config


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
