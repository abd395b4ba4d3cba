import math

import pandas as pd
import pytest
import torch

from costlab import models, profiles
from costlab.lessons import transfer
from costlab.train import CurvePoint, TrainResult


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64))


def test_mean_pooling_ignores_padding_and_drops_the_unused_pooler():
    model = transfer.MeanPoolClassifier(_tiny_bert()).eval()
    assert model.encoder.pooler is None
    ids = torch.randint(1, 100, (1, 6))
    short = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    padded_ids = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)], 1)
    padded = model(input_ids=padded_ids, attention_mask=mask).logits
    assert torch.allclose(short, padded, atol=1e-5)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([1]))
    assert out.loss is not None and out.loss.ndim == 0


def test_the_same_seed_gives_both_arms_the_same_head():
    a = transfer.MeanPoolClassifier(_tiny_bert(), seed=3)
    b = transfer.MeanPoolClassifier(_tiny_bert(), seed=3)
    assert torch.equal(a.head.weight, b.head.weight)


def test_race_sizes_come_from_every_profile():
    for name in profiles.PROFILES:
        p = profiles.get(name)
        race = transfer.Race.from_profile(p)
        assert race.target == p.transfer_target and len(race.seeds) == p.transfer_seeds
        assert race.batch_size == p.transfer_batch_size and race.lr == p.transfer_lr
        assert race.max_steps == p.transfer_max_steps
    with pytest.raises(ValueError):
        transfer.Race.from_profile(profiles.get("smoke"), budget_multiple=0.5)


def _arm(pretrained: bool, reached_at: int | None, steps: int, flops_per_step: int = 10, accuracy: float = 0.5):
    result = TrainResult(points=[CurvePoint(i, i * flops_per_step, i * 0.1, 0.5,
                                            0.9 if reached_at is not None and i >= reached_at else 0.5)
                                 for i in range(1, steps + 1)], flops_per_step=flops_per_step)
    if reached_at is not None:
        result.steps_to_target, result.flops_to_target = reached_at, reached_at * flops_per_step
        result.seconds_to_target = reached_at * 0.1
    acc = {"val": accuracy, "test": accuracy, "test_heldout": accuracy}
    return transfer.Arm("pretrained" if pretrained else "scratch", 0, result, 1000, acc)


def test_flops_ratio_and_the_censored_scratch_arm():
    pre = _arm(True, 4, 4)
    assert transfer.flops_ratio(pre, _arm(False, None, 20)) == math.inf
    assert transfer.flops_ratio(pre, _arm(False, 12, 12)) == 3.0
    assert transfer.flops_ratio(_arm(True, None, 30), _arm(False, None, 150)) == 0.0  # the check must fail
    record = transfer.arm_record([_arm(False, None, 20)])
    assert "flops_to_target" not in record["metrics"]  # a run that never got there writes no such value
    assert record["metrics"]["flops"] == 200
    record = transfer.arm_record([_arm(True, 4, 4, accuracy=0.8)])
    assert record["metrics"]["flops_to_target"] == 40 and record["quality"]["accuracy"] == 0.8


def test_saving_by_target_reads_the_curves():
    pre, scratch = _arm(True, 4, 4), _arm(False, None, 20)
    table = transfer.saving_by_target([(pre, scratch)], [0.5, 0.9])
    assert table.loc[0.5, "scratch / pretrained"] == 1.0
    assert pd.isna(table.loc[0.9, "scratch FLOPs"]) and pd.isna(table.loc[0.9, "scratch / pretrained"])


def test_pretraining_bill_is_6ND_of_the_published_figures():
    bill = transfer.pretraining_bill(22_700_000, fine_tune_flops=1e12, flops_per_sec=1e11)
    assert bill.loc["BERT-Base", "6·N·D (FLOPs, estimate)"] == 6 * 110e6 * 128e9
    assert bill.loc["Llama-2-7B", "6·N·D (FLOPs, estimate)"] == 6 * 7e9 * 2e12
    minilm = bill.iloc[0]
    assert minilm["N (params)"] == 22_700_000 and minilm["x our fine-tune to target"] == 6 * 22.7e6 * 128e9 / 1e12


@pytest.fixture
def tiny_encoder_dir(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(models.resolve("minilm"))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    monkeypatch.setenv(models.ENCODER_ENV, str(tmp_path))
    return tmp_path


def test_scratch_gets_exactly_the_budget_multiple_of_the_pretrained_flops(tiny_encoder_dir):
    race = transfer.Race(target=1.0, seeds=(0,), batch_size=4, max_steps=2, eval_every=1, layers=None,
                         seq_len=16, n_train=16, n_eval=8, lr=1e-3, budget_multiple=3)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_encoder_dir)
    made = []

    def pretrained(seed):
        made.append("pretrained")
        return transfer.MeanPoolClassifier(AutoModel.from_pretrained(tiny_encoder_dir, config=config), seed=seed)

    def scratch(seed):
        made.append("scratch")
        return transfer.MeanPoolClassifier(AutoModel.from_config(config), seed=seed)

    pre, scratch_arm = transfer.race_one_seed(race, 0, pretrained=pretrained, scratch=scratch,
                                              tokenizer=AutoTokenizer.from_pretrained(tiny_encoder_dir))
    assert made == ["pretrained", "scratch"] and pre.pretrained and not scratch_arm.pretrained
    scratch = scratch_arm
    spent = pre.result.flops_to_target or pre.result.total_flops
    if not scratch.reached:
        assert scratch.result.total_flops == 3 * spent
    assert set(pre.accuracy) == {"val", "test", "test_heldout"}
