"""The kit's generated data set: product reviews with a sentiment label and a difficulty score.

Deterministic from a seed (`python -m costlab data` rewrites data/reviews/, a test checks that
regenerating gives identical files). Difficulty comes from how the review is built:
  plain (0.0)       "The battery is excellent."
  negation (0.35)   "The battery is not terrible."            -> positive
  contrast (0.65)   "The screen is awful, but the battery is superb overall." -> the `but` clause
  mixed (1.0)       several aspects, the verdict in a closing sentence
Opinion words are split: the test_heldout split uses only words that never occur in training,
so a model can get them right only from knowledge it brought (pretraining) - the point of 01/03.
`train_noisy` is train with a fraction of labels flipped (for 07, curriculum on noisy labels).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
SPLIT_SIZES = {"train": 4000, "val": 500, "test": 500, "test_heldout": 500}
NOISE_FRACTION = 0.2  # share of train labels flipped in train_noisy
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "reviews"  # in a clone of the repository


def data_dir() -> Path:
    """The review splits: the repository's data/reviews/ in a clone; for a kit installed with
    `pip install` (no data/ beside the package), the same files generated once from the seed
    into the user cache (deterministic: byte-identical to the shipped ones)."""
    if (DATA_DIR / "train.jsonl").exists():
        return DATA_DIR
    from filelock import FileLock

    from .models import cache_dir

    target = cache_dir() / f"reviews-seed{SEED}"
    if not (target / "train.jsonl").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock", timeout=600):
            if not (target / "train.jsonl").exists():
                tmp = target.with_name(target.name + ".tmp")
                write(tmp)
                tmp.rename(target)
    return target

PRODUCTS = ["phone", "laptop", "blender", "headset", "camera", "kettle", "monitor", "backpack",
            "vacuum", "speaker", "watch", "keyboard", "router", "printer", "drone", "lamp"]
ASPECTS = ["battery", "screen", "price", "delivery", "sound", "build", "design", "support",
           "manual", "packaging", "charger", "app", "warranty", "size", "weight", "finish"]
# Opinion words seen in training...
POSITIVE_TRAIN = ["great", "excellent", "good", "fantastic", "wonderful", "amazing", "perfect",
                  "nice", "lovely", "brilliant", "solid", "reliable"]
NEGATIVE_TRAIN = ["bad", "terrible", "awful", "poor", "horrible", "broken", "useless",
                  "cheap", "flimsy", "disappointing", "faulty", "weak"]
# ...and words that appear only in test_heldout (a pretrained model knows them; scratch cannot).
POSITIVE_HELDOUT = ["superb", "outstanding", "splendid", "terrific", "delightful", "impressive",
                    "flawless", "marvelous"]
NEGATIVE_HELDOUT = ["dreadful", "abysmal", "shoddy", "atrocious", "lousy", "defective",
                    "mediocre", "pathetic"]
OPENERS = ["I bought this {p} last month.", "Got the {p} as a gift.", "This is my second {p}.",
           "Ordered the {p} online.", "We use this {p} every day.", ""]
VERDICT = {1: ["Would buy again.", "Highly recommended.", "I am happy with it."],
           0: ["Would not buy again.", "Returning it.", "I regret this purchase."]}
KINDS = {"plain": 0.0, "negation": 0.35, "contrast": 0.65, "mixed": 1.0}


def _opinion(rng: random.Random, positive: bool, heldout: bool) -> str:
    if heldout:
        return rng.choice(POSITIVE_HELDOUT if positive else NEGATIVE_HELDOUT)
    return rng.choice(POSITIVE_TRAIN if positive else NEGATIVE_TRAIN)


def _review(rng: random.Random, heldout: bool) -> dict:
    label = rng.randint(0, 1)
    kind = rng.choice(list(KINDS))
    product = rng.choice(PRODUCTS)
    a1, a2, a3 = rng.sample(ASPECTS, 3)
    word = lambda positive: _opinion(rng, positive, heldout)  # noqa: E731
    if kind == "plain":
        body = f"The {a1} is {word(label == 1)}."
    elif kind == "negation":
        body = f"The {a1} is not {word(label == 0)}."  # "not bad" -> positive
    elif kind == "contrast":
        body = f"The {a1} is {word(label == 0)}, but the {a2} is {word(label == 1)} overall."
    else:
        body = (f"The {a1} is {word(label == 0)} and the {a2} is {word(label == 0)}. "
                f"Still, the {a3} is {word(label == 1)}, and that is what matters. "
                f"{rng.choice(VERDICT[label])}")
    opener = rng.choice(OPENERS).format(p=product)
    text = f"{opener} {body}".strip()
    # Longer reviews of the same kind are a little harder: more to read past.
    difficulty = round(min(1.0, KINDS[kind] + 0.002 * len(text.split())), 4)
    return {"text": text, "label": label, "kind": kind, "difficulty": difficulty}


def generate(seed: int = SEED) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for split, size in SPLIT_SIZES.items():
        rows: list[dict] = []
        while len(rows) < size:
            row = _review(rng, heldout=(split == "test_heldout"))
            if row["text"] in seen:  # no review text is shared between splits
                continue
            seen.add(row["text"])
            rows.append({"id": f"{split}-{len(rows):05d}", **row})
        splits[split] = rows
    noisy_rng = random.Random(seed + 1)
    splits["train_noisy"] = [
        {**row, "label": 1 - row["label"], "flipped": True} if noisy_rng.random() < NOISE_FRACTION
        else {**row, "flipped": False} for row in splits["train"]
    ]
    return splits


def write(directory: Path = DATA_DIR, seed: int = SEED) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for split, rows in generate(seed).items():
        path = directory / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        written.append(path)
    return written
