"""Published figures to show beside ours (from the design's ANCHORS table), labelled as
published, with source and conditions. Ours are ratios measured in one run on the learner's
hardware; theirs were measured elsewhere, so compare directions and orders of magnitude."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Anchor:
    lessons: tuple[str, ...]  # lesson numbers it belongs to
    figure: str
    conditions: str
    source: str
    ratio: float | None = None  # the published saving as "x better", where it is one number
    metric: str | None = None  # the vocabulary metric that ratio is about


ANCHORS: tuple[Anchor, ...] = (
    Anchor(("00",), "Training FLOPs ~ 6·N·D (N non-embedding parameters, D tokens)",
           "dense transformers, attention's context term left out", "Kaplan et al. 2020, arXiv 2001.08361"),
    Anchor(("00",), "Mixed-precision AdamW: ~16-18 bytes per parameter before activations",
           "fp16/bf16 weights and grads, fp32 master weights and Adam states",
           "Rajbhandari et al. 2020 (ZeRO); Hugging Face 'model memory anatomy'"),
    Anchor(("00",), "Activations per layer ~ s·b·h·(34 + 5·a·s/h) bytes", "16-bit, GPT-style block with dropout",
           "Korthikanti et al. 2022, arXiv 2205.05198"),
    Anchor(("01",), "BERT pretraining: 4 days on 4-16 Cloud TPUs; fine-tuning: at most 1 hour on one TPU",
           "BERT-Base/Large", "google-research/bert README"),
    Anchor(("01",), "Llama-2-7B pretraining: 184,320 A100-80GB GPU-hours", "2T tokens",
           "Llama 2 paper (Touvron et al. 2023)"),
    Anchor(("01", "03"), "ULMFiT: with 100 labelled examples matches training from scratch on 100x more data",
           "6 text-classification sets", "Howard & Ruder 2018, arXiv 1801.06146"),
    Anchor(("02",), "LoRA: 10,000x fewer trainable parameters", "GPT-3 175B, r=4, Wq and Wv",
           "Hu et al. 2021, arXiv 2106.09685", 10_000, "trainable_params"),
    Anchor(("02",), "LoRA: 3x less GPU memory (1.2 TB -> 350 GB)", "GPT-3 175B, r=4, Wq and Wv",
           "Hu et al. 2021, arXiv 2106.09685", 1.2e12 / 350e9, "peak_mem_bytes"),
    Anchor(("02",), "LoRA: checkpoint 350 GB -> 35 MB", "GPT-3 175B, r=4, Wq and Wv",
           "Hu et al. 2021, arXiv 2106.09685", 350e9 / 35e6, "checkpoint_bytes"),
    Anchor(("02",), "LoRA: ~25% faster training", "GPT-3 175B", "Hu et al. 2021, arXiv 2106.09685",
           1.25, "step_time_sec"),
    Anchor(("02",), "LoRA on par with full fine-tuning: WikiSQL 73.4 vs 73.8, MNLI-m 91.7 vs 89.5 (accuracy %)",
           "GPT-3 175B, 4.7M trainable parameters on Wq and Wv (Table 4)", "Hu et al. 2021, arXiv 2106.09685"),
    Anchor(("02",), "QLoRA: 65B model fine-tuned on one 48 GB GPU (>780 GB -> <48 GB)",
           "NF4, double quantization, paged optimizers", "Dettmers et al. 2023, arXiv 2305.14314",
           780 / 48, "peak_mem_bytes"),
    Anchor(("04",), "Memory O(sqrt n) for about one extra forward pass", "n-layer network",
           "Chen et al. 2016, arXiv 1604.06174"),
    Anchor(("04",), "~20% slower training with checkpointing", "transformers",
           "Hugging Face transformers docs", 1 / 1.2, "step_time_sec"),
    Anchor(("05",), "43% faster training across 163 models (fp32 +21%, AMP +51%)", "A100",
           "PyTorch 2.0 announcement", 1.43, "step_time_sec"),
    Anchor(("05",), "CPU inference geomean 1.20x (HF), 1.39x (TorchBench), 1.73x (TIMM)", "Xeon, fp32",
           "TorchInductor CPU backend update, dev-discuss.pytorch.org", 1.20, "latency_ms"),
    Anchor(("06",), "AlexNet 9x and VGG-16 13x fewer parameters, no accuracy loss", "prune + retrain",
           "Han et al. 2015", 9, "total_params"),
    Anchor(("06",), "Dynamic int8: BERT 438 MB -> 181 MB, F1 0.902 unchanged, ~1.8x faster on CPU", "MRPC",
           "PyTorch dynamic quantization tutorial", 438 / 181, "model_size_bytes"),
    Anchor(("06",), "Unstructured pruning masks save neither memory nor time by themselves",
           "torch.nn.utils.prune", "PyTorch forums (maintainer answer)"),
    Anchor(("07",), "Curricula help little on clean standard data; they help with a limited budget or noisy labels",
           ">25k models, CIFAR/FOOD101", "Wu, Dyer & Neyshabur 2021, 'When do curricula work?'"),
    Anchor(("08",), "DistilBERT: 40% smaller, 60% faster, 97% of BERT's language understanding", "GLUE",
           "Sanh et al. 2019, arXiv 1910.01108", 1.6, "latency_ms"),
    Anchor(("08",), "Soft targets as a regularizer: on 3% of the training set, hard labels 44.5% test frame "
           "accuracy (they overfit), soft targets 57.0%; all of it, hard labels: 58.9%",
           "speech acoustic model, 14,000 classes", "Hinton, Vinyals & Dean 2015, arXiv 1503.02531, Table 5"),
    Anchor(("09",), "Hyperband: more than an order of magnitude faster than Bayesian optimization",
           "deep-learning tasks", "Li et al. 2016, arXiv 1603.06560", 10, "flops_to_target"),
    Anchor(("10",), "DDP: near-linear scaling to 256 GPUs", "PyTorch 1.5", "Li et al. 2020, arXiv 2006.15704"),
    Anchor(("10",), "Below a critical batch size, doubling the batch halves the steps at the same samples; "
           "above it, steps fall little and samples grow; the critical size is measured per task and "
           "grows as the loss falls", "image, language and RL tasks",
           "McCandlish et al. 2018, 'An Empirical Model of Large-Batch Training', arXiv 1812.06162"),
    Anchor(("10",), "Linear scaling rule: multiply the learning rate by k when the batch grows k-fold, "
           "with a gradual warm-up", "SGD with momentum, ResNet-50 on ImageNet",
           "Goyal et al. 2017, arXiv 1706.02677"),
    Anchor(("11",), "ZeRO: 16 bytes/param for mixed-precision Adam; stage 1: 4x, stage 2: 8x, stage 3: N x less per GPU",
           "N data-parallel GPUs", "Rajbhandari et al. 2020 (ZeRO)"),
    Anchor(("11",), "Tensor-parallel MLP (first GEMM split by columns, second by rows): one all-reduce in "
           "forward and one in backward per block", "Megatron-LM, GPUs of one node",
           "Shoeybi et al. 2019, arXiv 1909.08053"),
    Anchor(("13",), "Mixed precision: fp16 storage and arithmetic with fp32 master weights nearly halves memory, "
           "accuracy matches fp32", "CNNs, RNNs, GANs on GPUs with tensor cores",
           "Micikevicius et al. 2018, arXiv 1710.03740"),
    Anchor(("13",), "FlashAttention: memory linear in sequence length (no L x L matrix stored); GPT-2 trains 3x faster "
           "at 1K tokens", "A100", "Dao et al. 2022, arXiv 2205.14135"),
    Anchor(("13",), "Cut Cross-Entropy: the loss computation's memory 24 GB -> 1 MB", "Gemma 2 (2B)",
           "Wijmans et al. 2024, arXiv 2411.09009", 24e9 / 1e6, "activation_bytes"),
    Anchor(("14",), "bert-large on a V100: 14.9 GB, 57.8 s -> with accumulation, checkpointing, fp16, 8-bit Adam: 5.4 GB, 49.5 s",
           "batch 4, 512 tokens", "Hugging Face perf_train_gpu_one (v4.27 era)", 14.9 / 5.4, "peak_mem_bytes"),
    Anchor(("14",), "Mixed precision: 1.5-5.5x on V100, a further 1.3-2.5x on A100", "8 GPUs",
           "PyTorch blog, 'What every user should know about mixed precision training'"),
)


def for_lesson(number: str) -> list[Anchor]:
    return [a for a in ANCHORS if number in a.lessons]


def beside(number: str, ours: dict[str, float] | None = None):
    """A table of the lesson's published figures, with our measured ratio beside each
    (ours: {metric: x-better ratio measured here})."""
    import pandas as pd

    ours = ours or {}
    rows = []
    for a in for_lesson(number):
        mine = ours.get(a.metric) if a.metric else None
        rows.append({"published (not measured here)": a.figure, "conditions": a.conditions,
                     "source": a.source,
                     "published x": f"{a.ratio:.3g}x" if a.ratio else "",
                     "ours x (measured here)": f"{mine:.3g}x" if mine is not None else ""})
    return pd.DataFrame(rows)
