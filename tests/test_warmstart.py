import pytest
import torch

from costlab import data, models, profiles, warmstart


@pytest.fixture(scope="module")
def setup():
    return warmstart.prepare(profiles.override(profiles.get("smoke"), n_train=64, n_eval=32))


def test_vocabulary_keeps_exactly_the_rows_the_data_uses(setup):
    assert len(setup.vocab) < setup.vocab.full_size
    ids = setup.train_set["input_ids"]
    assert int(ids.min()) >= 0 and int(ids.max()) < len(setup.vocab)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        setup.vocab.remap({"input_ids": torch.tensor([[setup.vocab.full_size - 1]])})


def test_copied_rows_are_the_encoders_standardized():
    encoder, tokenizer = models.load("minilm", task="encoder", layers=1)
    vocab = warmstart.Vocabulary.from_texts(tokenizer, ["The battery is superb."], 16)
    table = encoder.get_input_embeddings().weight.detach()
    raw = warmstart.pretrained_rows(encoder, vocab, standardize=False)
    assert torch.equal(raw, table[vocab.token_ids])
    std = warmstart.pretrained_rows(encoder, vocab)
    torch.testing.assert_close(std, (raw - table.mean(0)) / table.std(0))


def test_variants_differ_by_the_embedding_switch_alone(setup):
    kw = dict(channels=16, seed=3)
    random_, frozen, trained = (warmstart.build(e, setup.rows, **kw) for e in warmstart.EMBEDDINGS)
    for a, b in ((random_, frozen), (frozen, trained)):
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            if not name.startswith("embed"):
                assert torch.equal(pa, pb), name
    assert torch.equal(frozen.embed.weight, setup.rows) and torch.equal(trained.embed.weight, setup.rows)
    assert not torch.equal(random_.embed.weight, setup.rows)
    n_embed = setup.rows.numel()
    assert models.count_params(trained, True) - models.count_params(frozen, True) == n_embed
    with pytest.raises(ValueError, match="embedding must be"):
        warmstart.build("glove", setup.rows, channels=4)


def test_padding_does_not_change_the_prediction(setup):
    model = warmstart.build("frozen", setup.rows, channels=8).eval()
    batch = {k: v[:2] for k, v in setup.train_set.items() if k != "labels"}
    longer = {"input_ids": torch.cat([batch["input_ids"], torch.zeros(2, 5, dtype=torch.long)], 1),
              "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(2, 5, dtype=torch.long)], 1)}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model(**longer).logits)


def test_a_run_reports_its_curve_and_target(setup):
    r = warmstart.run(setup, "frozen", seed=0, steps=4, lr=1e-3, batch_size=8, eval_every=2, target=0.0)
    assert [s for s, _ in r.curve] == [2, 4]
    assert r.steps_to_target == 2 and r.flops_to_target == 2 * r.flops_per_step > 0
    assert 0 <= r.heldout_accuracy <= 1
    never = warmstart.run(setup, "random", seed=0, steps=2, lr=1e-3, batch_size=8, eval_every=2, target=1.01)
    assert never.steps_to_target is None
    assert warmstart.median_steps([r, never, never], budget=2) == (2, True)
