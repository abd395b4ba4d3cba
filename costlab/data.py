"""Loading records (the kit's reviews, a user's CSV/JSONL, a hub data set), tokenizing, batching.

A record is a dict with at least `text` and `label` (0 = negative, 1 = positive). Batches are
dicts of tensors that a transformers model takes as `model(**batch)`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from . import reviews

LABEL_WORDS = ("negative", "positive")  # the causal LM's answer for label 0 / 1
SPLITS = tuple(reviews.SPLIT_SIZES) + ("train_noisy",)


def load_split(split: str, limit: int | None = None) -> list[dict]:
    """One split of the shipped review set (generated into data/reviews/ by costlab.reviews)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    path = reviews.data_dir() / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path.name} is missing; regenerate it with `python -m costlab data`")
    return load_records(path, limit=limit)


def load_records(source: str | Path, *, text_column: str = "text", label_column: str = "label",
                 split: str = "train", limit: int | None = None) -> list[dict]:
    """A user's own data: a CSV or JSONL file, or a hub data set id (needs `pip install datasets`).

    Labels may be 0/1 or the words negative/positive; other columns are kept.
    """
    path = Path(source).expanduser()
    if path.suffix in (".jsonl", ".json") and path.exists():
        rows = _read_jsonl(path)
    elif path.suffix == ".csv" and path.exists():
        rows = _read_csv(path)
    elif path.exists():
        raise ValueError(f"{path.name}: use a .csv or .jsonl file with columns "
                         f"{text_column!r} and {label_column!r}")
    else:
        rows = _load_hub_dataset(str(source), split)
    out = []
    for i, row in enumerate(rows[:limit] if limit else rows):
        if text_column not in row or label_column not in row:
            raise KeyError(f"row {i} of {source} lacks {text_column!r} or {label_column!r} "
                           f"(columns: {sorted(row)}); pass text_column=/label_column=")
        try:
            label = _label(row[label_column])
        except (TypeError, ValueError):
            raise DataFileError(f"row {i} of {source}: label {row[label_column]!r} is not 0/1 or "
                                f"negative/positive") from None
        out.append({**row, "text": str(row[text_column]), "label": label})
    return out


class DataFileError(ValueError):
    """A data file that cannot be read, with the file, the line and the fix in the message."""


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                fix = (f"regenerate it with `python -m costlab data`" if path.parent == reviews.DATA_DIR
                       else "fix or delete that line (a copy cut short, or a run killed mid-write, tears the last line)")
                raise DataFileError(f"{path}, line {number}: not valid JSON ({e.msg}, column {e.colno}): "
                                    f"{line.strip()[:80]!r}. Each line must be one JSON object; {fix}") from None
            if not isinstance(row, dict):
                raise DataFileError(f"{path}, line {number}: a JSON {type(row).__name__}, not an object "
                                    f'like {{"text": ..., "label": ...}}')
            rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    import pandas as pd

    try:
        return pd.read_csv(path).to_dict("records")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        # pandas' own message carries the line ("Expected 2 fields in line 5, saw 3")
        raise DataFileError(f"{path}: cannot be read as CSV: {str(e).strip()}. Each row needs the same "
                            f"columns as the header; quote a text that holds a comma (\"like, this\"), and "
                            f"check the file's last line is whole") from None


def _label(value) -> int:
    if isinstance(value, str) and value.lower() in LABEL_WORDS:
        return LABEL_WORDS.index(value.lower())
    label = int(value)
    if label not in (0, 1):
        raise ValueError(f"labels must be 0/1 or negative/positive, got {value!r}")
    return label


def _load_hub_dataset(name: str, split: str) -> list[dict]:
    from .models import ModelNotAvailable, hub_reachable

    try:
        import datasets
    except ImportError:
        raise ModuleNotFoundError(f"{name!r} is not a file here; to load a hub data set, "
                                  f"`pip install datasets` first") from None
    if not hub_reachable():
        raise ModelNotAvailable(f"{name!r} is not a local file and the hub cannot be reached "
                                f"(offline): pass a local .csv or .jsonl file instead")
    return list(datasets.load_dataset(name, split=split))


def encode_classification(tokenizer, records: list[dict], seq_len: int) -> dict[str, torch.Tensor]:
    """Tokenize reviews for a sequence classifier: fixed length, so every batch costs the same."""
    enc = tokenizer([r["text"] for r in records], padding="max_length", truncation=True,
                    max_length=seq_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": torch.tensor([r["label"] for r in records])}


def lm_prompt(record: dict) -> str:
    return f"Review: {record['text']}\nSentiment:"


def lm_text(record: dict) -> str:
    """The kit's LM task: a review followed by its sentiment word."""
    return f"{lm_prompt(record)} {LABEL_WORDS[record['label']]}"


def encode_lm(tokenizer, records: list[dict], seq_len: int) -> dict[str, torch.Tensor]:
    """Tokenize LM-task texts; padding positions get label -100 so they cost no loss."""
    enc = tokenizer([lm_text(r) for r in records], padding="max_length", truncation=True,
                    max_length=seq_len, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def num_examples(encoded: dict[str, torch.Tensor]) -> int:
    return len(next(iter(encoded.values())))


def batches(encoded: dict[str, torch.Tensor], batch_size: int, *, seed: int = 0,
            order: list[int] | None = None, shuffle: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches: reshuffled every epoch (seeded), or in a given example `order`."""
    n = num_examples(encoded)
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} examples available")
    generator = torch.Generator().manual_seed(seed)
    while True:
        if order is not None:
            index = torch.as_tensor(order)
        else:
            index = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, len(index) - batch_size + 1, batch_size):
            chunk = index[start:start + batch_size]
            yield {k: v[chunk] for k, v in encoded.items()}


def eval_batches(encoded: dict[str, torch.Tensor], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Every example once, in order (the last batch may be smaller)."""
    n = num_examples(encoded)
    return [{k: v[i:i + batch_size] for k, v in encoded.items()} for i in range(0, n, batch_size)]
