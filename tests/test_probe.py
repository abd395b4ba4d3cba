import torch

from costlab import probe


def _split(n=16, seq=6, dim=12):
    torch.manual_seed(0)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[:, 4:] = 0
    return {"hidden": torch.randn(n, seq, dim) * 3 + 5, "attention_mask": mask, "labels": torch.randint(0, 2, (n,))}


def test_head_standardizes_on_real_tokens_and_ignores_padding():
    split = _split()
    head = probe.build_head(split, hidden=8, seed=0)
    real = split["hidden"][split["attention_mask"].bool()]
    torch.testing.assert_close(head.mean, real.mean(0))
    out = head(split["hidden"], split["attention_mask"], split["labels"])
    assert out.logits.shape == (16, 2) and out.loss.item() > 0
    changed = split["hidden"].clone()
    changed[:, 4:] = 1e3  # padding positions: must not matter
    torch.testing.assert_close(head(changed, split["attention_mask"]).logits, out.logits)


def test_same_seed_same_head_and_one_thread_restores_threads():
    split = _split()
    a, b = probe.build_head(split, seed=3), probe.build_head(split, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    before = torch.get_num_threads()
    with probe.one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_with_labels_swaps_labels_only():
    split = _split()
    other = probe.with_labels(split, [{"label": 1}] * 16)
    assert other["hidden"] is split["hidden"] and other["labels"].sum() == 16
