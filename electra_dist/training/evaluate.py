"""Held-out evaluation during pre-training, as the official ELECTRA reports it.

A fixed set of held-out sequences (the first `train.eval_samples` of the eval shards, in order) with
fixed corruption: masking and Gumbel sampling are counter-based functions of the sample, so every
evaluation sees the same masked positions and the same replacements, and no dropout. Sequence i goes
to data-parallel rank i mod DP; every quantity is a sum, all-reduced over DP and divided by global
counts, so the numbers do not depend on the DP (or TP) size.

    eval/loss                  generator_weight × MLM loss + λ × discriminator loss, per token as in training
    eval/generator_loss        masked-LM cross-entropy per masked token
    eval/generator_accuracy    masked-LM accuracy (argmax)
    eval/sampled_accuracy      fraction of masked tokens whose SAMPLED replacement is the original
    eval/discriminator_loss    replaced-token detection BCE per token
    eval/discriminator_accuracy, eval/discriminator_precision, eval/discriminator_recall
    eval/discriminator_auc     ROC AUC of the discriminator's scores, from 1000-bin histograms summed over ranks
    eval/seconds               what this evaluation cost (its share of training time: train.eval_interval)
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from electra_dist import parallel
from electra_dist.training.build import Run
from electra_dist.training.datacheck import eval_urls
from electra_dist.training.step import rtd_ratios

AUC_BINS = 1000  # discriminator-score histogram bins of the held-out AUC (error < 1/AUC_BINS)


def score_histograms(logits: torch.Tensor, replaced: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(2, AUC_BINS) counts of the discriminator's sigmoid scores of the replaced and of the original
    non-pad tokens: summed over batches and ranks, they give an exact-to-1/AUC_BINS AUC."""
    nonpad = attention_mask.bool()
    scores = torch.nan_to_num(torch.sigmoid(logits.float()), nan=0.0)  # NaN: the loss says so
    bins = (scores * AUC_BINS).long().clamp(0, AUC_BINS - 1).flatten()
    return torch.stack(
        [
            torch.zeros(AUC_BINS, dtype=torch.float64, device=bins.device).scatter_add_(0, bins, c.flatten().double())
            for c in (replaced & nonpad, nonpad & ~replaced)
        ]
    )


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """ROC AUC from score histograms (same bins): P(positive scores above negative), ties counted half."""
    below = torch.cumsum(negative, 0) - negative  # negatives in lower bins
    pairs = float(positive.sum() * negative.sum())
    return float((positive * (below + 0.5 * negative)).sum()) / pairs if pairs else float("nan")


class NoEvaluation:
    """A run without held-out shards (or train.eval_interval=0): nothing to evaluate."""

    def maybe_run(self, step: int, before: Callable[[], None] = lambda: None) -> None:
        return None


def make_evaluator(run: Run) -> Evaluator | NoEvaluation:
    t = run.cfg.train
    urls = eval_urls(run.cfg) if t.eval_interval else []
    return Evaluator(run, urls, t.eval_samples) if urls else NoEvaluation()


class Evaluator:
    def __init__(self, run: Run, urls: list[str], samples: int):
        self.run = run
        self.samples, self.batches = run.loader.held_out(urls, samples)

    def maybe_run(self, step: int, before: Callable[[], None] = lambda: None) -> dict[str, float] | None:
        """The held-out metrics at every train.eval_interval-th step and the last, after `before` (the
        metrics' finiteness check: a poisoned model is not evaluated); None at other steps."""
        t = self.run.cfg.train
        if step % t.eval_interval and step != t.max_steps:
            return None
        before()
        return self.evaluate()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        run = self.run
        model, device = run.model, run.layout.device
        t0 = time.perf_counter()
        was_training, temperature = model.training, float(model.temperature)
        model.eval()
        model.temperature.fill_(run.cfg.objective.temperature)  # a schedule's end: evaluations compare over a run
        one = torch.ones((), device=device)
        keys = (
            "gen_sum",
            "disc_sum",
            "masked",
            "generator_correct",
            "tokens",
            "replaced",
            "discriminator_correct",
            "true_positive",
            "predicted_positive",
        )
        total = torch.zeros(len(keys), dtype=torch.float64, device=device)
        hist = torch.zeros(2, AUC_BINS, dtype=torch.float64, device=device)  # replaced, original
        try:
            for b in self.batches:
                b = b.to(device)
                out = model(b, masked_normalizer=one, token_normalizer=one)  # losses as sums
                s = {**out.stats, "gen_sum": out.generator_loss, "disc_sum": out.discriminator_loss}
                total += torch.stack([torch.as_tensor(s[k], device=device).double() for k in keys])
                if out.discriminator_logits is not None:
                    hist += score_histograms(out.discriminator_logits, out.replaced, b.attention_mask)
        finally:
            model.train(was_training)
            model.temperature.fill_(temperature)
        summed = parallel.data_parallel_sum(torch.cat([total, hist.flatten()])).cpu()
        t = dict(zip(keys, summed[: len(keys)].tolist()))
        replaced_hist, original_hist = summed[len(keys) :].view(2, AUC_BINS)
        obj = run.cfg.objective
        gen_loss = t["gen_sum"] / max(1.0, t["masked"])
        r = rtd_ratios(t)
        m = {"eval/generator_loss": gen_loss, "eval/generator_accuracy": r["generator_accuracy"]}
        if obj.kind == "electra":
            disc_loss = t["disc_sum"] / max(1.0, t["tokens"])
            m.update(
                {
                    "eval/loss": (obj.generator_weight * gen_loss if obj.generator == "joint" else 0.0)
                    + obj.discriminator_weight * disc_loss,  # as trained: a frozen generator's loss is no term
                    "eval/sampled_accuracy": 1.0 - t["replaced"] / max(1.0, t["masked"]),
                    "eval/discriminator_loss": disc_loss,
                    "eval/discriminator_accuracy": r["discriminator_accuracy"],
                    "eval/discriminator_precision": r["discriminator_precision"],
                    "eval/discriminator_recall": r["discriminator_recall"],
                    "eval/discriminator_auc": auc(replaced_hist, original_hist),
                }
            )
        else:
            m["eval/loss"] = obj.generator_weight * gen_loss
        m["eval/seconds"] = time.perf_counter() - t0  # the all-reduce above read the device: the work is done
        return m
