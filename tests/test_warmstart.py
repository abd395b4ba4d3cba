import pytest
import torch
from torch import nn

from costlab import models, profiles
from costlab.lessons import warmstart


@pytest.fixture(scope="module")
def encoder():
    return models.load("minilm", task="encoder", layers=1)


@pytest.fixture(scope="module")
def setup(encoder):
    return warmstart.prepare(profiles.override(profiles.get("smoke"), n_train=64, n_eval=32), encoder[1])


def copied(setup, encoder, freeze=True):
    table = encoder[0].get_input_embeddings().weight.detach()
    rows = table[setup.vocab.token_ids]
    return rows, lambda seed: nn.Embedding.from_pretrained(rows.clone(), freeze=freeze)


def test_vocabulary_keeps_exactly_the_rows_the_data_uses(setup):
    assert len(setup.vocab) < setup.vocab.full_size
    ids = setup.train_set["input_ids"]
    assert int(ids.min()) >= 0 and int(ids.max()) < len(setup.vocab)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        setup.vocab.remap({"input_ids": torch.tensor([[setup.vocab.full_size - 1]])})


def test_fewer_labels_on_request(setup, encoder):
    small = warmstart.prepare(profiles.override(profiles.get("smoke"), n_eval=32), encoder[1], n_train=16)
    assert len(small.train_set["labels"]) == 16 and len(setup.train_set["labels"]) == 64


def test_variants_differ_by_the_embedding_alone(setup, encoder):
    rows, make = copied(setup, encoder)
    kw = dict(seed=3, steps=1, lr=0.0, batch_size=4, eval_every=1, target=2.0, channels=16)
    a = warmstart.run(setup, make, **kw).model
    b = warmstart.run(setup, lambda seed: nn.Embedding(*rows.shape), **kw).model
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if not name.startswith("embed"):
            assert torch.equal(pa, pb), name
    assert torch.equal(a.embed.weight, rows) and not torch.equal(b.embed.weight, rows)
    assert models.count_params(b, True) - models.count_params(a, True) == rows.numel()


def test_padding_does_not_change_the_prediction(setup, encoder):
    rows, make = copied(setup, encoder)
    model = warmstart.SmallClassifier(make(0), channels=8).eval()
    batch = {k: v[:2] for k, v in setup.train_set.items() if k != "labels"}
    longer = {"input_ids": torch.cat([batch["input_ids"], torch.zeros(2, 5, dtype=torch.long)], 1),
              "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(2, 5, dtype=torch.long)], 1)}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model(**longer).logits)


def test_a_run_reports_its_curves_and_target(setup, encoder):
    rows, make = copied(setup, encoder)
    kw = dict(seed=0, lr=1e-3, batch_size=8, eval_every=2)
    r = warmstart.run(setup, make, steps=4, target=0.0, target_split="heldout", **kw)
    assert [s for s, _ in r.curve] == [2, 4] == [s for s, _ in r.heldout_curve]
    assert r.steps_to_target == 2 and r.flops_to_target == 2 * r.flops_per_step > 0
    assert r.heldout_accuracy == r.heldout_curve[-1][1] and 0 <= r.heldout_accuracy <= 1
    assert warmstart.row_drift(r, rows) == 0  # frozen
    never = warmstart.run(setup, make, steps=2, target=1.01, **kw)
    assert never.steps_to_target is None
    assert warmstart.median_steps([r, never, never], budget=2) == (2, True)
    assert warmstart.first_at(((2, 0.5), (4, 0.9)), 0.8) == 4 and warmstart.first_at((), 0.1) is None
    with pytest.raises(ValueError, match="target_split"):
        warmstart.run(setup, make, steps=2, target=0.5, target_split="test", **kw)
