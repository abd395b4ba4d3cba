"""Bad input explains itself: each error names the file and the fix, fast, and loses nothing."""
from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from safetensors.torch import save_file

from costlab import data, models
from costlab.data import DataFileError
from costlab.models import ModelNotAvailable


def _valid_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.zeros(64)}, str(folder / "model.safetensors"))


def _truncate(file, keep: int = 40):
    file.write_bytes(file.read_bytes()[:keep])


def test_a_damaged_converted_model_in_the_cache_is_converted_again(tmp_path, monkeypatch, capsys):
    gguf_dir = tmp_path / "package"
    gguf_dir.mkdir()
    (gguf_dir / models._SMOLLM2_GGUF).write_bytes(b"x" * 123)  # the cache folder is named by its size
    monkeypatch.setenv("COSTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_package_dir", lambda package: gguf_dir)
    conversions = []
    monkeypatch.setattr(models, "_convert_gguf", lambda src, target: (conversions.append(target), _valid_folder(target)))
    target = tmp_path / "cache" / "smollm2-135m-instruct-123"
    _valid_folder(target)
    assert models.resolve("smollm2") == target and conversions == []  # a sound copy is used as it is
    _truncate(target / "model.safetensors")  # a copy cut short: 'incomplete metadata' in transformers
    assert models.resolve("smollm2") == target
    out = capsys.readouterr().out
    assert str(target) in out and "damaged" in out and "converting again" in out
    # converted once, into a temporary folder renamed into place (nobody sees half a conversion)
    assert len(conversions) == 1 and conversions[0].name.startswith(target.name + ".tmp")
    assert models.weights_problem(target) is None and not conversions[0].exists()


@pytest.fixture
def minilm_copy(tmp_path):
    """A copy of the shipped MiniLM folder that a test may break."""
    folder = tmp_path / "my-model"
    shutil.copytree(models.resolve("minilm"), folder)
    return folder


@pytest.mark.parametrize("remove, says", [("config.json", "missing config.json"),
                                          ("model.safetensors", "no *.safetensors weights"),
                                          (("tokenizer.json", "vocab.txt"), "missing tokenizer files")])
def test_a_local_model_folder_says_what_it_lacks(minilm_copy, remove, says):
    for name in (remove,) if isinstance(remove, str) else remove:
        (minilm_copy / name).unlink()
    started = time.perf_counter()
    with pytest.raises(ModelNotAvailable) as error:
        models.load(str(minilm_copy), task="encoder")
    message = str(error.value)
    assert str(minilm_copy) in message and says in message
    assert "config.json" in message and "*.safetensors" in message and "save_pretrained" in message
    assert "sentencepiece" not in message and time.perf_counter() - started < 10


def test_a_truncated_local_weights_file_is_named(minilm_copy):
    _truncate(minilm_copy / "model.safetensors", keep=1000)
    with pytest.raises(ModelNotAvailable, match=r"model\.safetensors cannot be read"):
        models.load(str(minilm_copy), task="encoder")


def test_a_random_init_model_needs_no_weights(minilm_copy):
    (minilm_copy / "model.safetensors").unlink()
    model, _ = models.load(str(minilm_copy), task="encoder", pretrained=False, layers=1)
    assert models.count_params(model) > 0


def test_a_torn_jsonl_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    good = [json.dumps({"text": "fine", "label": 1}), json.dumps({"text": "bad", "label": 0})]
    path.write_text("\n".join(good) + '\n{"text": "cut sho')
    with pytest.raises(DataFileError, match=r"mine\.jsonl, line 3: not valid JSON.*fix or delete that line"):
        data.load_records(path)
    path.write_text("\n".join(good) + "\n")  # the fix the message gives: the two whole lines load
    assert [r["label"] for r in data.load_records(path)] == [1, 0]


def test_the_kits_own_torn_file_says_how_to_regenerate_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data.reviews, "DATA_DIR", tmp_path)
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": 1}\n{"text"\n')
    with pytest.raises(DataFileError, match=r"train\.jsonl, line 2.*python -m costlab data"):
        data.load_split("train")


def test_a_torn_csv_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text('text,label\n"fine",1\n"also fine",0\n"too, many",1,extra\n')
    with pytest.raises(DataFileError, match=r"mine\.csv: cannot be read as CSV.*line 4"):
        data.load_records(path)
    path.write_text('text,label\n"fine",1\n"cut short,0\n')
    with pytest.raises(DataFileError, match=r"mine\.csv.*last line is whole"):
        data.load_records(path)


def test_a_bad_label_names_the_row_and_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"text": "a", "label": "great"}) + "\n")
    with pytest.raises(DataFileError, match=r"row 0 of .*mine\.jsonl: label 'great'"):
        data.load_records(path)
