import math

import pytest
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from costlab.lessons import curriculum


def test_competence_grows_from_start_to_one_at_the_pacing_step():
    values = [curriculum.competence(t, 100, 0.2) for t in range(0, 151, 10)]
    assert values[0] == pytest.approx(0.2)
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert curriculum.competence(100, 100, 0.2) == pytest.approx(1.0)
    assert values[-1] == 1.0


def _encoded(n=100):
    return {"index": torch.arange(n), "labels": torch.zeros(n, dtype=torch.long)}


def test_easy_to_hard_draws_only_from_the_easiest_share_early_on():
    enc = _encoded()
    scores = torch.arange(100, 0, -1).float()  # example 99 is the easiest, 0 the hardest
    sched = curriculum.Schedule("easy_to_hard", pacing_steps=1000, start=0.1)
    first = next(curriculum.paced_batches(enc, scores, 8, schedule=sched, seed=0))["index"]
    assert (first >= 89).all()  # the easiest ~10% in play at step 1
    hard = curriculum.Schedule("hard_to_easy", pacing_steps=1000, start=0.1)
    first_hard = next(curriculum.paced_batches(enc, scores, 8, schedule=hard, seed=0))["index"]
    assert (first_hard <= 10).all()


def test_random_order_uses_every_example_from_the_start_and_needs_no_scores():
    batches = curriculum.paced_batches(_encoded(), None, 10, schedule=curriculum.Schedule("random"), seed=0)
    seen = torch.cat([next(batches)["index"] for _ in range(5)])
    assert seen.max() > 50 and seen.min() < 50
    with pytest.raises(ValueError, match="one score per example"):
        next(curriculum.paced_batches(_encoded(), None, 10, schedule=curriculum.Schedule("easy_to_hard"), seed=0))


class _Memorizer(torch.nn.Module):
    """Scores an example low (loss ~0) if it trained on it, high otherwise."""

    def __init__(self, seen):
        super().__init__()
        self.seen = set(seen.tolist())

    def forward(self, index, labels=None):
        known = torch.tensor([i in self.seen for i in index.tolist()])
        logits = torch.stack([torch.where(known, 20.0, -20.0), torch.zeros(len(index))], -1)
        return SequenceClassifierOutput(logits=logits)


def test_cross_fitted_scores_come_from_models_that_never_saw_the_example():
    enc = _encoded(60)
    scores = curriculum.cross_fitted_loss_scores(lambda subset, seed: _Memorizer(subset["index"]), enc, folds=3)
    # Labels are all 0: a model that had seen the example gives it ~0 loss, one that had not ~20.
    assert (scores > 10).all()
    in_sample = curriculum.loss_scores(_Memorizer(enc["index"]), enc)
    assert (in_sample < 1e-3).all()


def test_share_at_hard_end_and_spread_with_runs_that_never_reached():
    scores = torch.arange(10).float()
    marked = torch.tensor([False] * 8 + [True, True])
    assert curriculum.share_at_hard_end(scores, marked, share=0.2) == 1.0
    s = curriculum.spread([10, None, 30])
    assert s.median == 30 and math.isinf(s.high) and s.reached == 2
    assert "never" in s.text()
    assert curriculum.finite_or_none(math.inf) is None


def test_first_reaching_reads_the_curve():
    from costlab.train import CurvePoint, TrainResult

    result = TrainResult(points=[CurvePoint(5, 50, 0.1, 0.7, 0.6), CurvePoint(10, 100, 0.2, 0.5, None),
                                 CurvePoint(15, 150, 0.3, 0.4, 0.85)])
    assert curriculum.first_reaching(result, 0.8) == (15, 150)
    assert curriculum.first_reaching(result, 0.9) == (None, None)
