import math

import torch

from costlab.lessons import curriculum
from costlab.train import CurvePoint, TrainConfig, TrainResult


def test_share_at_hard_end_and_spread_with_runs_that_never_reached():
    scores = torch.arange(10).float()
    marked = torch.tensor([False] * 8 + [True, True])
    assert curriculum.share_at_hard_end(scores, marked, share=0.2) == 1.0
    assert curriculum.share_at_hard_end(-scores, marked, share=0.2) == 0.0
    s = curriculum.spread([10, None, 30])
    assert s.median == 30 and math.isinf(s.high) and s.reached == 2
    assert "never" in s.text()


def test_first_reaching_reads_the_curve():
    result = TrainResult(points=[CurvePoint(5, 50, 0.1, 0.7, 0.6), CurvePoint(10, 100, 0.2, 0.5, None),
                                 CurvePoint(15, 150, 0.3, 0.4, 0.85)])
    assert curriculum.first_reaching(result, 0.8) == (15, 150)
    assert curriculum.first_reaching(result, 0.9) == (None, None)
    summary = curriculum.RunSummary.of([result, result, TrainResult(points=[CurvePoint(5, 50, 0.1, 0.7, 0.5)])], 0.8)
    assert summary.steps.median == 15 and summary.steps.reached == 2 and summary.final.median == 0.85


def test_over_seeds_pairs_initial_weights_and_passes_each_seed_to_the_sampler():
    x = torch.randn(64, 4)
    examples = {"x": x, "labels": (x[:, 0] > 0).long()}
    asked, initial = [], {}

    class Linear(torch.nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.layer = torch.nn.Linear(4, 2)
            initial.setdefault(seed, []).append(self.layer.weight.detach().clone())

        def forward(self, x, labels):
            from transformers.modeling_outputs import SequenceClassifierOutput
            logits = self.layer(x)
            return SequenceClassifierOutput(loss=torch.nn.functional.cross_entropy(logits, labels), logits=logits)

    def sampler(seed):
        asked.append(seed)
        generator = torch.Generator().manual_seed(seed)
        while True:
            chosen = torch.randint(64, (8,), generator=generator)
            yield {k: v[chosen] for k, v in examples.items()}

    cfg = TrainConfig(steps=4, lr=1e-2, eval_every=2, progress=False)
    results = curriculum.over_seeds(Linear, sampler, cfg, seeds=(0, 1), evaluate=lambda m: 0.5)
    again = curriculum.over_seeds(Linear, sampler, cfg, seeds=(0,), evaluate=lambda m: 0.5)
    assert asked == [0, 1, 0] and len(results) == 2 and len(results[0].points) == 4
    torch.testing.assert_close(initial[0][0], initial[0][1])  # same seed, same initial weights
    assert [p.loss for p in results[0].points] == [p.loss for p in again[0].points]
    assert results[0].points[1].metric == 0.5 and results[0].points[0].metric is None


def test_plots_draw_without_error():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2)
    curriculum.plot_scores(a, torch.arange(10).float(), torch.arange(10) > 7, "t")
    result = TrainResult(points=[CurvePoint(5, 50, 0.1, 0.7, 0.6), CurvePoint(10, 100, 0.2, 0.5, 0.9)])
    curriculum.plot_curves(b, {"random": [result, result]}, 0.8, bold=("random",))
    plt.close(fig)


def test_summary_table_has_a_row_per_variant_and_charges_scoring_to_loss_scores_only():
    reached = TrainResult(points=[CurvePoint(5, 50, 0.1, 0.7, 0.9)])
    never = TrainResult(points=[CurvePoint(5, 50, 0.1, 0.7, 0.5)])
    summaries = {("noisy", "random"): curriculum.RunSummary.of([reached] * 3, 0.8),
                 ("noisy", "easy_to_hard:loss"): curriculum.RunSummary.of([never] * 3, 0.8)}
    table = curriculum.summary_table(summaries, {"noisy": 2e9}, 0.8).data
    assert list(table["+ scoring GFLOP"]) == [0.0, 2.0]
    assert math.isnan(table["training GFLOP to target"].iloc[1]) and table["seeds reaching it"].iloc[0] == "3/3"
