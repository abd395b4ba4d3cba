import copy
import math

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model

from costlab import data, meter, models
from costlab.lessons import distill


def _tiny_teacher(layers=4):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return distill.EncoderClassifier(BertModel(config), hidden=8)


def _tokenizer():
    return AutoTokenizer.from_pretrained(models.resolve("minilm"))


def test_unknown_tokens_read_as_unk_and_are_counted():
    tokenizer = _tokenizer()
    vocab = distill.domain_vocabulary(tokenizer, ["the battery is good"], 8)
    enc = tokenizer(["the battery is superb"], padding="max_length", max_length=8, return_tensors="pt")
    remapped = vocab.remap(dict(enc))["input_ids"][0]
    unk_row = int(vocab.lookup[tokenizer.unk_token_id])
    assert unk_row in remapped.tolist()
    assert 0 < vocab.unknown_share(dict(enc)) < 1


def test_soft_temperature_softens_a_confident_teacher_to_the_asked_confidence():
    margins = torch.tensor([10.0, 20.0, 44.0, 60.0, 80.0])
    binary = torch.stack([torch.zeros(5), margins], 1)
    temperature = distill.soft_temperature(binary, confidence=0.9)
    # Two classes: p = sigmoid(margin / T), so the median margin (44) sits at logit(0.9) = ln 9.
    assert temperature == pytest.approx(44.0 / math.log(9), rel=1e-6)
    three = torch.randn(64, 3) * 30
    assert distill.median_confidence(three, distill.soft_temperature(three, confidence=0.6)) == pytest.approx(0.6, abs=1e-6)
    assert distill.soft_temperature(torch.zeros(4, 2) + torch.tensor([0.0, 0.5]), confidence=0.9) == 1.0  # soft already
    for confidence in (0.5, 1.0):  # a coin toss for 2 classes, or one-hot: no temperature gives either
        with pytest.raises(ValueError, match="confidence"):
            distill.soft_temperature(binary, confidence=confidence)


def test_keep_blocks_finds_the_blocks_of_another_architecture():
    model = GPT2Model(GPT2Config(n_layer=4, n_embd=16, n_head=2, vocab_size=100, n_positions=32))
    models.keep_blocks(model, [0, 3])
    assert len(model.h) == 2 and model.config.num_hidden_layers == 2
    out = model(input_ids=torch.randint(0, 100, (2, 5))).last_hidden_state
    assert out.shape == (2, 5, 16)


def test_domain_vocabulary_keeps_every_token_the_texts_use_and_the_specials():
    tokenizer = _tokenizer()
    texts = [r["text"] for r in data.load_split("train", 50)]
    vocab = distill.domain_vocabulary(tokenizer, texts, 24)
    enc = data.encode_classification(tokenizer, data.load_split("train", 50), 24)
    assert vocab.unknown_share(enc) == 0.0
    assert tokenizer.unk_token_id in vocab.token_ids.tolist() and tokenizer.pad_token_id in vocab.token_ids.tolist()
    remapped = vocab.remap(enc)["input_ids"]
    assert remapped.max() < len(vocab)
    torch.testing.assert_close(vocab.token_ids[remapped], enc["input_ids"])  # rows map back to the ids


def test_train_student_calibrates_and_passes_teacher_logits_and_labels_to_the_loss():
    teacher = _tiny_teacher(layers=2)
    tokenizer = _tokenizer()
    records = data.load_split("train", 16)
    train_set = data.encode_classification(tokenizer, records, 16)
    targets = distill.soft_targets(teacher, train_set)
    assert targets.shape == (16, 2)
    student = copy.deepcopy(teacher)
    models.keep_blocks(student.encoder, [0])
    seen = []

    def loss(student_logits, teacher_logits, labels):
        seen.append((student_logits.shape, teacher_logits.shape, labels.shape))
        return torch.nn.functional.cross_entropy(student_logits, labels)

    result = distill.train_student(student, train_set, targets, loss, steps=3, lr=1e-3, batch_size=4, seed=0,
                                   calibration=8)
    assert len(result.points) == 3 and result.total_flops > 0
    assert ((4, 2), (4, 2), (4,)) in seen
    assert models.count_params(student) < models.count_params(teacher)
    timings = meter.inference_latencies({"teacher": (teacher, train_set), "student": (student, train_set)},
                                        warmup=0, repeats=1, rounds=1)
    assert set(timings) == {"teacher", "student"} and all(t.median_sec > 0 for t in timings.values())
