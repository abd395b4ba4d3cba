"""The course manifest: one entry per notebook. The README's table, `make course` and the report
are all generated from this list, so nothing is typed twice."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass(frozen=True)
class Lesson:
    number: str  # "00".."14"
    slug: str  # notebook file stem after the number, and its ledger name is f"{number}_{slug}"
    cut: str
    change: str  # baseline -> variant
    headline: str  # the measure the lesson is about
    headline_metric: str | None  # the ledger metric the report shows as the saving
    published: str  # the published figure shown beside ours (costlab.anchors)
    source: str

    @property
    def name(self) -> str:
        return f"{self.number}_{self.slug}"

    @property
    def path(self) -> Path:
        return NOTEBOOK_DIR / f"{self.name}.ipynb"


LESSONS: tuple[Lesson, ...] = (
    Lesson("00", "measuring_cost", "how to measure a training step", "—",
           "FLOPs, memory anatomy, time, energy, $ and CO2; predicted vs measured", "flops",
           "Training FLOPs ~ 6·N·D", "Kaplan et al. 2020"),
    Lesson("01", "fine_tune_dont_pretrain", "transfer learning", "random init -> pretrained MiniLM",
           "FLOPs and time to a target accuracy", "flops_to_target",
           "BERT: pretraining 4 days on 4-16 Cloud TPUs, fine-tuning at most 1 hour on one TPU",
           "google-research/bert README"),
    Lesson("02", "lora", "PEFT / LoRA (+ QLoRA)", "full fine-tune -> LoRA -> 4-bit base + LoRA",
           "trainable params, optimizer+grad bytes, peak memory, checkpoint size, quality",
           "optimizer_state_bytes",
           "LoRA: 10,000x fewer trainable parameters, 3x less GPU memory (GPT-3 175B)",
           "Hu et al. 2021, arXiv 2106.09685"),
    Lesson("03", "warm_start", "warm-start embeddings/layers", "random embeddings -> pretrained, frozen",
           "steps to target, trainable params", "steps_to_target",
           "ULMFiT: 100 labelled examples match scratch on 100x more data",
           "Howard & Ruder 2018, arXiv 1801.06146"),
    Lesson("04", "gradient_checkpointing", "recompute activations", "store all -> checkpoint",
           "activation bytes, peak memory, step-time overhead, largest batch that fits",
           "activation_bytes", "Memory O(sqrt n) for about one extra forward pass; ~20% slower",
           "Chen et al. 2016, arXiv 1604.06174; Hugging Face docs"),
    Lesson("05", "compiler_fusion", "torch.compile", "eager -> compiled",
           "compile time, step time, break-even step count", "step_time_sec",
           "43% faster training across 163 models (A100); CPU inference geomean 1.20x (HF)",
           "PyTorch 2.0 announcement; TorchInductor CPU update"),
    Lesson("06", "pruning_quantization", "prune + quantize",
           "fp32 -> pruned (unstructured and structured) -> int8 / 4-bit", "model bytes, latency, accuracy",
           "model_size_bytes", "Dynamic int8 BERT: 438 MB -> 181 MB, F1 unchanged, ~1.8x faster on CPU",
           "PyTorch dynamic quantization tutorial"),
    Lesson("07", "curriculum_learning", "easy -> hard ordering", "random order -> paced curriculum",
           "steps to target, on clean and on noisy labels", "steps_to_target",
           "Curricula help little on clean data; help with a limited budget or noisy labels",
           "Wu, Dyer & Neyshabur 2021"),
    Lesson("08", "distillation", "teacher -> student", "student on labels -> student on soft targets",
           "student size, latency, % of teacher quality", "latency_ms",
           "DistilBERT: 40% smaller, 60% faster, 97% of BERT", "Sanh et al. 2019, arXiv 1910.01108"),
    Lesson("09", "hyperparameter_search", "early-terminating search",
           "random search / TPE at full budget -> TPE + successive halving (Optuna)",
           "compute to a config within 1% of the best, median over 100 seeds",
           "flops_to_target", "Hyperband: more than an order of magnitude faster than Bayesian optimization",
           "Li et al. 2016, arXiv 1603.06560"),
    Lesson("10", "data_parallelism", "right-size data parallelism",
           "1 worker -> N workers (torchrun DDP) vs gradient accumulation",
           "throughput, scaling efficiency, samples and cost to a target", "throughput_samples_per_sec",
           "DDP: near-linear scaling to 256 GPUs", "Li et al. 2020, arXiv 2006.15704"),
    Lesson("11", "model_parallelism", "right-size sharding", "DDP replicas -> FSDP shards",
           "bytes per rank vs the ZeRO formula, communication overhead", "optimizer_state_bytes",
           "ZeRO: 16 bytes/param for mixed-precision Adam; stage 3: N x less per GPU",
           "Rajbhandari et al. 2020"),
    Lesson("12", "async_evaluation", "keep the accelerator busy", "evaluate inline -> evaluate in the background",
           "trainer busy fraction, wall time", "wall_sec", "—", "—"),
    Lesson("13", "precision_and_kernels", "use the hardware you pay for",
           "fp32, eager attention, padded batches, full logits -> bf16 autocast, SDPA, bucketing, chunked loss",
           "step time, activation bytes, FLOPs per real token", "activation_bytes",
           "Cut Cross-Entropy: Gemma 2 (2B) loss memory 24 GB -> 1 MB",
           "Wijmans et al. 2024, arXiv 2411.09009"),
    Lesson("14", "stacking_the_cuts", "capstone", "baseline -> cuts added one by one",
           "waterfall of memory, time, $; the cheapest config that fits a budget", "peak_mem_bytes",
           "bert-large on a V100: 14.9 GB, 57.8 s -> 5.4 GB, 49.5 s with the stack",
           "Hugging Face perf_train_gpu_one (v4.27 era)"),
)


# Named subsets of the course: `make course TRACK=workshop` runs just these (WORKSHOP.md says
# why these and how long each took here).
TRACKS: dict[str, tuple[str, ...]] = {
    "workshop": ("00", "03", "04", "05", "06"),
}


def track(name: str) -> list[str]:
    if name not in TRACKS:
        raise KeyError(f"no track {name!r}; tracks: {', '.join(TRACKS)}")
    return list(TRACKS[name])


def lesson(name: str) -> Lesson:
    for item in LESSONS:
        if name in (item.name, item.number, item.slug):
            return item
    raise KeyError(f"no lesson {name!r}; lessons: {', '.join(l.name for l in LESSONS)}")


def available() -> list[Lesson]:
    """Lessons whose notebook exists in this checkout."""
    return [item for item in LESSONS if item.path.exists()]


def markdown_table() -> str:
    rows = ["| # | notebook | the cut | baseline -> variant | headline measure |",
            "|---|---|---|---|---|"]
    for item in LESSONS:
        link = f"[{item.name}](notebooks/{item.name}.ipynb)" if item.path.exists() else f"{item.name} (not yet written)"
        rows.append(f"| {item.number} | {link} | {item.cut} | {item.change} | {item.headline} |")
    return "\n".join(rows)


TABLE_START, TABLE_END = "<!-- course-table:start -->", "<!-- course-table:end -->"


def readme_with_table(readme: str) -> str:
    """The README text with the generated course table between its markers."""
    head, rest = readme.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_START}\n{markdown_table()}\n{TABLE_END}{tail}"
