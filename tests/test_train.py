import copy

import pytest
import torch

from costlab import data, evaluation, models
from costlab.train import TrainConfig, train


def _classifier_setup(n=64, seq_len=24):
    model, tokenizer = models.load("minilm", task="classification", layers=1)
    enc = data.encode_classification(tokenizer, data.load_split("train", n), seq_len)
    return model, enc


def test_training_stops_at_the_target_and_reports_where():
    model, enc = _classifier_setup()
    cfg = TrainConfig(steps=40, lr=1e-3, eval_every=1, target=0.0, progress=False)
    result = train(model, data.batches(enc, 8), cfg, evaluate=lambda m: 1.0)
    assert result.steps_to_target == 1 and len(result.points) == 1
    assert result.flops_to_target == result.flops_per_step > 0


def test_training_learns_and_counts_flops_per_step():
    model, enc = _classifier_setup()
    before = evaluation.accuracy(model, data.eval_batches(enc, 16))
    result = train(model, data.batches(enc, 8), TrainConfig(steps=12, lr=3e-4, progress=False),
                   evaluate=lambda m: evaluation.accuracy(m, data.eval_batches(enc, 16)))
    assert result.points[-1].flops == 12 * result.flops_per_step
    assert result.final_metric > before or result.final_metric > 0.75


def test_gradient_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    model_a, enc = _classifier_setup(n=16)
    model_b = copy.deepcopy(model_a)  # the same randomly initialised head on both
    for m in (model_a, model_b):
        for module in m.modules():  # no dropout, so both compute the same function
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    full = {k: v[:8] for k, v in enc.items()}
    halves = iter([{k: v[:4] for k, v in enc.items()}, {k: v[4:8] for k, v in enc.items()}])
    sgd = dict(optimizer="sgd", lr=0.1, max_grad_norm=None, progress=False, count_flops=False)
    train(model_a, iter([full]), TrainConfig(steps=1, **sgd))
    train(model_b, halves, TrainConfig(steps=1, grad_accum=2, **sgd))
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-4, rtol=1e-3)  # fp32 summation order


def test_bad_switches_are_clear_errors():
    import pytest

    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(steps=1, optimizer="adam9000")
    if not torch.cuda.is_available():
        model, enc = _classifier_setup(n=16)
        with pytest.raises(RuntimeError, match="fp16"):
            train(model, data.batches(enc, 8), TrainConfig(steps=1, autocast="fp16", progress=False))


def test_eval_mode_restores_the_model_mode_even_when_the_block_raises():
    import pytest
    from torch import nn

    from costlab.evaluation import eval_mode

    model = nn.Sequential(nn.Dropout(0.5))
    with eval_mode(model):
        assert not model.training
    assert model.training
    model.eval()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("inside")
    assert not model.training  # it was in eval mode before, and stays so


def test_the_accuracy_gap_standard_error_is_never_zero_and_shrinks_with_n():
    # a perfect score beside a near-perfect one is still a measurement with an error bar
    assert evaluation.accuracy_gap_se(1.0, 0.998, 500) > 0.002
    # sqrt(p(1-p)/n) per side at n = 10,000: about the plain binomial figure
    assert evaluation.accuracy_gap_se(0.9, 0.8, 10_000) == pytest.approx((0.09 / 1e4 + 0.16 / 1e4) ** 0.5, rel=0.01)
    assert evaluation.accuracy_gap_se(0.9, 0.8, 100) > evaluation.accuracy_gap_se(0.9, 0.8, 1000)
    with pytest.raises(ValueError):
        evaluation.accuracy_gap_se(0.9, 0.8, 0)
