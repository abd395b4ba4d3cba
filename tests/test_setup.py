import time
from pathlib import Path

import pytest

from costlab import course, data, hardware, models, profiles, reviews

ROOT = Path(__file__).resolve().parent.parent


def test_a_bad_profile_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("COSTLAB_PROFILE", "laptop")
    with pytest.raises(profiles.ProfileError, match="smoke, cpu, gpu"):
        profiles.get()


def test_profiles_validate_their_sizes():
    with pytest.raises(profiles.ProfileError):
        profiles.override(profiles.get("smoke"), seeds=(0,))
    with pytest.raises(profiles.ProfileError, match="student_examples"):  # 08's students need labels
        profiles.override(profiles.get("smoke"), student_examples=0)


def test_unknown_devices_get_none_not_a_guess():
    unknown = hardware.Device("cuda", "Mystery Accelerator 9000", None, True, 1, None)
    assert hardware.price_usd_per_hour(unknown) is None
    assert hardware.power_w(unknown) is None and hardware.peak_flops(unknown) is None
    h100 = hardware.Device("cuda", "NVIDIA H100 80GB HBM3", None, True, 1, hardware._table_key("cuda", "NVIDIA H100 80GB HBM3"))
    assert hardware.price_usd_per_hour(h100) == hardware.PRICE_USD_PER_HOUR["H100"]
    assert hardware._table_key("cuda", "NVIDIA A100-SXM4-80GB") == "A100-80GB"


def test_gpu_only_switch_on_cpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
        hardware.require_cuda("fp16 autocast")


def test_offline_hub_id_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(models.ModelNotAvailable, match="local folder"):
        models.load("gpt2")
    assert time.perf_counter() - started < 5


def test_unknown_local_path_is_a_clear_error():
    with pytest.raises(models.ModelNotAvailable, match="does not exist"):
        models.load("./no/such/checkpoint")


def test_minilm_loads_offline_with_22_7m_params():
    model, tokenizer = models.load("minilm")
    assert models.count_params(model) == 22_713_216
    assert models.lora_targets(model) == ["query", "value"]


def test_smollm2_loads_offline_with_134_5m_params():
    model, tokenizer = models.load("smollm2")
    assert models.count_params(model) == 134_515_008
    assert models.lora_targets(model) == ["q_proj", "v_proj"]
    assert tokenizer.pad_token is not None


def test_truncation_keeps_the_first_pretrained_blocks():
    import torch

    full, _ = models.load("minilm")
    short, _ = models.load("minilm", layers=2)
    assert len(models.transformer_blocks(short)) == 2 and short.config.num_hidden_layers == 2
    assert torch.equal(short.encoder.layer[1].attention.self.query.weight,
                       full.encoder.layer[1].attention.self.query.weight)
    random_init, _ = models.load("minilm", layers=2, pretrained=False)
    assert not torch.equal(random_init.encoder.layer[0].attention.self.query.weight,
                           full.encoder.layer[0].attention.self.query.weight)


def test_a_profile_deeper_than_the_model_uses_the_whole_model_and_says_so(capsys):
    """Profiles give an upper bound (cpu keeps 6 blocks): MiniLM has 6, so 8 means all of them."""
    import pytest

    model, _ = models.load("minilm", layers=8)
    assert len(models.transformer_blocks(model)) == models.depth("minilm") == 6
    assert "the model has 6 blocks; using all of them (8 asked for)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="at least 1"):
        models.load("minilm", layers=0)


def test_regenerating_the_data_gives_identical_files(tmp_path):
    written = reviews.write(tmp_path)
    for path in written:
        assert path.read_bytes() == (reviews.DATA_DIR / path.name).read_bytes(), path.name


def test_heldout_opinion_words_never_occur_in_training():
    train_words = {w.strip(".,").lower() for r in data.load_split("train") for w in r["text"].split()}
    for word in reviews.POSITIVE_HELDOUT + reviews.NEGATIVE_HELDOUT:
        assert word not in train_words
    heldout = " ".join(r["text"] for r in data.load_split("test_heldout"))
    assert any(w in heldout for w in reviews.POSITIVE_HELDOUT)


def test_noisy_copy_flips_about_the_stated_fraction():
    clean, noisy = data.load_split("train"), data.load_split("train_noisy")
    flipped = sum(a["label"] != b["label"] for a, b in zip(clean, noisy))
    assert abs(flipped / len(clean) - reviews.NOISE_FRACTION) < 0.03


def test_user_csv_with_word_labels_loads(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("review,sentiment\nlovely kettle,positive\nbroke in a week,negative\n")
    rows = data.load_records(path, text_column="review", label_column="sentiment")
    assert [r["label"] for r in rows] == [1, 0]
    with pytest.raises(KeyError, match="text_column"):
        data.load_records(path)


def test_lm_labels_mask_padding():
    _, tokenizer = models.load("smollm2", layers=1)
    enc = data.encode_lm(tokenizer, data.load_split("val", 4), 64)
    assert ((enc["labels"] == -100) == (enc["attention_mask"] == 0)).all()


def test_readme_course_table_is_generated_from_the_manifest():
    readme = (ROOT / "README.md").read_text()
    assert course.readme_with_table(readme) == readme, "run `make readme` to regenerate the table"


def test_every_manifest_notebook_is_committed_without_outputs():
    import nbformat

    for lesson in course.available():
        nb = nbformat.read(lesson.path, as_version=4)
        dirty = [c for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{lesson.name} has outputs committed"
        assert "trust_remote_code=True" not in lesson.path.read_text()


def test_an_installed_kit_without_data_folder_generates_the_same_splits_in_the_cache(tmp_path, monkeypatch):
    """`pip install` ships the package, not data/: the splits are generated once into the cache."""
    monkeypatch.setattr(reviews, "DATA_DIR", tmp_path / "no-clone" / "reviews")
    monkeypatch.setenv("COSTLAB_CACHE", str(tmp_path / "cache"))
    folder = reviews.data_dir()
    assert folder.parent == tmp_path / "cache"
    for name in ("train.jsonl", "test_heldout.jsonl"):
        clone_copy = Path(reviews.__file__).resolve().parent.parent / "data" / "reviews" / name
        assert (folder / name).read_bytes() == clone_copy.read_bytes()
    (folder / "val.jsonl").write_text((folder / "val.jsonl").read_text().replace("great", "GREAT"))
    assert any("GREAT" in r["text"] for r in data.load_split("val")), "load_split must read the generated folder"
