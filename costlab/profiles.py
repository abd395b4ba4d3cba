"""Run sizes: one frozen dataclass per profile, so notebooks never hard-code a size.

`COSTLAB_PROFILE` = smoke | cpu | gpu picks one; the default is `gpu` when CUDA is present,
else `cpu`. `smoke` is what CI runs: the whole course in minutes on 2 CPU cores.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

PROFILE_ENV = "COSTLAB_PROFILE"


class ProfileError(ValueError):
    """A bad profile name or size."""


@dataclass(frozen=True)
class Profile:
    name: str
    # Causal LM (smollm2 by default): how many pretrained blocks to keep (None = all).
    lm_layers: int | None
    # Encoder (MiniLM by default): how many pretrained blocks to keep (None = all 6).
    encoder_layers: int | None
    seq_len: int  # tokens per example for the causal LM
    cls_seq_len: int  # tokens per review for the classifiers
    batch_size: int  # examples per optimizer step
    train_steps: int  # optimizer steps of a fine-tuning run
    eval_every: int  # steps between evaluations
    n_train: int  # training reviews used (of the generated set)
    n_eval: int  # validation reviews used for each evaluation
    target_accuracy: float  # "reached the target" threshold for steps-to-target measures
    warmup_steps: int  # timing: steps run and discarded before timing
    timed_steps: int  # timing: steps whose median is reported
    seeds: tuple[int, ...]  # seeds for learning-dynamics comparisons (at least 3)
    world_size: int  # processes for the distributed notebooks
    # Causal-LM depth where an effect grows with depth (04: the blocks' activations must outweigh
    # the LM head's logits for checkpointing to show; with 2 blocks the head dominates).
    deep_lm_layers: int | None
    # Causal-LM depth whose training step torch.compile compiles whole in 05 (compile time and
    # step time grow with the graph).
    compile_layers: int | None
    # Rows of the pointwise block 05 compiles: large enough that memory traffic, which fusion
    # cuts, dominates (a tensor that fits in cache is compute-bound, and fusion may lose there;
    # above ~32 MiB per tensor, eager also pays fresh page faults for every intermediate).
    fusion_rows: int
    # Optimizer steps of a run that trains a small head on a frozen encoder's stored features
    # (07's orders x seeds, 09's search trials, 08's teacher head): about a millisecond each.
    head_steps: int
    # Blocks of the distilled student in 08 (the teacher has encoder_layers blocks), and its
    # optimizer steps (it starts from the teacher's weights but must adapt to fewer blocks).
    student_layers: int
    student_steps: int
    # Labelled reviews both students learn from: a slice of the teacher's n_train (capped there).
    # Soft targets carry what the teacher learned from all of them. With every label the
    # hard-label student matched the teacher on cpu (1.000 vs 0.998): nothing left to pass on.
    # On 256 (cpu): hard 0.844 median (0.688-0.998), distilled 0.996 (0.988-1.000). Hinton et
    # al. 2015 (section 6) made the same cut: 3% of the data, where hard labels overfit and soft
    # targets did not.
    student_examples: int
    # 08's teacher fine-tuning learning rate: a deeper encoder needs a smaller one (the 6-block
    # MiniLM measured 0.916 test accuracy at 1e-4, 0.998 at 3e-5, 0.47 at 3e-4; 2 blocks: 0.996 at 1e-4).
    teacher_lr: float
    # The capstone's fine-tuning job (14), run once per step of the stack, on 02's depth
    # (lora_layers) at full_lr: few reviews per step, each padded to stack_seq_len tokens. Every
    # review fits in 48, so there length bucketing has padding to remove; smoke's 16 cuts them all.
    stack_seq_len: int
    stack_batch_size: int
    stack_steps: int  # optimizer steps per variant (the first also compiles, when compiling)
    stack_eval_examples: int  # validation reviews behind each variant's eval loss
    # LoRA's learning rate on that job: zero-initialised adapters on a frozen base take large
    # steps, and the deeper the model the smaller they must be. Measured on the stack's 8-bit
    # step: 2 blocks (smoke) best at 3e-2 of 1e-3...3e-2; 6 blocks (cpu) eval loss 5.8 at 3e-2,
    # 4.6 at 1e-2 (seed 0). All 30 blocks (cpu): at 1e-2 one seed of three diverged on the full
    # stack (QLoRA), so 5e-3. gpu: not measured, set lower on that trend.
    stack_lora_lr: float
    # 01's race, pretrained vs randomly initialized encoder, one recipe for both. The encoder
    # truncated to 2 blocks (smoke) learns the reviews' negations and contrasts slowly, and the
    # scratch arm must be given 5x the pretrained FLOPs: smoke races one seed to a lower bar.
    transfer_target: float  # validation accuracy to reach
    transfer_seeds: int  # how many of `seeds` race (one race per seed)
    transfer_batch_size: int  # reviews per optimizer step
    transfer_max_steps: int  # the pretrained arm's step cap (scratch gets 5x what it spends)
    transfer_lr: float  # AdamW, both arms (6 blocks stall at 5e-4; 2 blocks crawl at 2e-4)
    # 02 (LoRA): every variant (full / LoRA / QLoRA, each in a fresh process) trains lora_steps
    # steps on batches of lora_batch_size reviews padded to lora_seq_len tokens (every review
    # fits in 48 smollm2 tokens: longer only adds padding). Learning rates: full fine-tuning moves
    # every weight; LoRA's few adapter weights take larger steps (Hu et al. 2021 use 2e-4 to
    # 2e-3 where full fine-tuning used ~1e-4).
    # 02's depth: None = the whole model, so LoRA's quality is compared with full fine-tuning on a
    # working model (a truncated one measures LoRA repairing the cut); smoke keeps 2 blocks for speed.
    lora_layers: int | None
    lora_seq_len: int
    lora_batch_size: int
    lora_steps: int
    lora_eval_examples: int  # validation reviews behind each variant's eval loss
    full_lr: float
    lora_lr: float
    # 03 (warm start): optimizer steps of each embedding variant x seed; every variant runs the
    # whole budget. A random table seldom reaches the held-out-vocabulary target, and its median
    # is then this budget (a lower bound), so it must exceed twice the copies' steps.
    warm_steps: int

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ProfileError(f"profile {self.name!r}: {field.name} must be >= 0, got {value}")
        if len(self.seeds) < 3:
            raise ProfileError(f"profile {self.name!r}: at least 3 seeds, got {self.seeds}")
        if not 0 < self.target_accuracy <= 1:
            raise ProfileError(f"profile {self.name!r}: target_accuracy must be in (0, 1]")
        if not 0 < self.transfer_target <= 1 or not 1 <= self.transfer_seeds <= len(self.seeds):
            raise ProfileError(f"profile {self.name!r}: transfer_target in (0, 1], "
                               f"transfer_seeds between 1 and {len(self.seeds)}")
        if self.student_examples < 1:
            raise ProfileError(f"profile {self.name!r}: student_examples must be >= 1 (at most n_train are used)")
        if self.eval_every < 1 or self.timed_steps < 1:
            raise ProfileError(f"profile {self.name!r}: eval_every and timed_steps must be >= 1")


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", lm_layers=2, encoder_layers=2, seq_len=64, cls_seq_len=32, batch_size=8,
        train_steps=30, eval_every=5, n_train=512, n_eval=128, target_accuracy=0.8,
        warmup_steps=1, timed_steps=3, seeds=(0, 1, 2), world_size=2,
        deep_lm_layers=6, compile_layers=1, fusion_rows=65536,
        head_steps=300, student_layers=1, student_steps=60, student_examples=64, teacher_lr=1e-4,
        stack_seq_len=16, stack_batch_size=4, stack_steps=4, stack_eval_examples=16, stack_lora_lr=3e-2,
        transfer_target=0.65, transfer_seeds=1, transfer_batch_size=16, transfer_lr=7e-4,
        lora_layers=2, lora_seq_len=48, lora_batch_size=4, lora_steps=8, lora_eval_examples=16,
        full_lr=1e-3, lora_lr=1e-2, warm_steps=160,
        transfer_max_steps=40,
    ),
    "cpu": Profile(
        name="cpu", lm_layers=6, encoder_layers=None, seq_len=128, cls_seq_len=48, batch_size=16,
        train_steps=150, eval_every=10, n_train=2000, n_eval=256, target_accuracy=0.85,
        warmup_steps=2, timed_steps=5, seeds=(0, 1, 2), world_size=2,
        deep_lm_layers=12, compile_layers=2, fusion_rows=131072,
        head_steps=400, student_layers=2, student_steps=150, student_examples=256, teacher_lr=3e-5,
        stack_seq_len=48, stack_batch_size=4, stack_steps=20, stack_eval_examples=64, stack_lora_lr=5e-3,
        transfer_target=0.85, transfer_seeds=3, transfer_batch_size=16, transfer_lr=2e-4,
        lora_layers=None, lora_seq_len=48, lora_batch_size=8, lora_steps=40, lora_eval_examples=64,
        full_lr=3e-4, lora_lr=1e-2, warm_steps=150,
        transfer_max_steps=150,
    ),
    "gpu": Profile(
        name="gpu", lm_layers=None, encoder_layers=None, seq_len=256, cls_seq_len=64, batch_size=32,
        train_steps=400, eval_every=20, n_train=4000, n_eval=500, target_accuracy=0.9,
        warmup_steps=5, timed_steps=20, seeds=(0, 1, 2, 3, 4), world_size=2,
        deep_lm_layers=None, compile_layers=None, fusion_rows=262144,
        head_steps=600, student_layers=3, student_steps=400, student_examples=512, teacher_lr=3e-5,
        stack_seq_len=128, stack_batch_size=8, stack_steps=60, stack_eval_examples=256, stack_lora_lr=3e-3,
        transfer_target=0.9, transfer_seeds=5, transfer_batch_size=32, transfer_lr=2e-4,
        lora_layers=None, lora_seq_len=64, lora_batch_size=32, lora_steps=100, lora_eval_examples=256,
        full_lr=1e-4, lora_lr=1e-3, warm_steps=200,
        transfer_max_steps=400,
    ),
}


def default_profile_name() -> str:
    """`gpu` when CUDA is usable, else `cpu` (CI sets `smoke` explicitly)."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def get(name: str | None = None) -> Profile:
    """The profile named, else `COSTLAB_PROFILE`, else the hardware default."""
    chosen = name or os.environ.get(PROFILE_ENV) or default_profile_name()
    try:
        return PROFILES[chosen]
    except KeyError:
        raise ProfileError(
            f"unknown profile {chosen!r} (from {'argument' if name else PROFILE_ENV}); "
            f"choose one of: {', '.join(PROFILES)}"
        ) from None


def override(profile: Profile, **sizes) -> Profile:
    """A copy with some sizes changed, validated like the originals (the 'Try it' knobs)."""
    return dataclasses.replace(profile, **sizes)
