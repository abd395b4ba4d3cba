"""Run one variant in a fresh Python process, so its memory peak is its own.

`isolate("costlab.workloads:lm_training", layers=2, lora_r=8)` starts a subprocess that imports
torch and transformers, notes its RSS (imports alone weigh hundreds of MB), resets the peak,
calls the function, and returns the function's dict plus `peak_mem_bytes`: the CUDA allocator
peak, or the process's peak RSS net of its RSS before the variant began. The variant is data
(a function path and JSON arguments) because functions defined in a notebook cannot be sent to
another process.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile


class IsolatedRunFailed(RuntimeError):
    pass


def isolate(target: str, *, timeout_s: float = 900, preload: tuple[str, ...] = (), **kwargs) -> dict:
    """Call `module:function(**kwargs)` in a fresh process; return its result dict.

    preload: more modules to import before the RSS baseline is taken, like torch and
    transformers (e.g. ("peft",): peft pulls in bitsandbytes, ~150 MB of libraries that no
    variant's model or data owns; left out, they count in every LoRA variant's peak).
    """
    if ":" not in target:
        raise ValueError(f"target must be 'module:function', got {target!r}")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump({"target": target, "kwargs": kwargs, "preload": list(preload)}, f)
        try:
            proc = subprocess.run([sys.executable, "-m", "costlab.isolate", spec_path, out_path],
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise IsolatedRunFailed(f"{target}({kwargs}) ran past {timeout_s:.0f} s and was stopped") from None
        if proc.returncode != 0 or not os.path.exists(out_path):
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise IsolatedRunFailed(f"{target}({kwargs}) failed in its fresh process "
                                    f"(exit {proc.returncode}):\n{tail}")
        with open(out_path) as f:
            return json.load(f)


def _main(spec_path: str, out_path: str) -> None:
    import torch  # noqa: F401  (imported before the baseline, like the variant's own imports)
    import transformers  # noqa: F401

    from . import meter

    with open(spec_path) as f:
        spec = json.load(f)
    for name in spec.get("preload", ()):
        importlib.import_module(name)
    module_name, func_name = spec["target"].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    meter.reset_peak_rss()
    rss_before = meter.rss_bytes()
    result = dict(func(**spec["kwargs"]))
    if cuda:
        result.setdefault("peak_mem_bytes", torch.cuda.max_memory_allocated())
        result.setdefault("peak_mem_kind", "cuda_allocator_peak")
    else:
        result.setdefault("peak_mem_bytes", meter.peak_rss_bytes() - rss_before)
        result.setdefault("peak_mem_kind", "process_peak_rss_net")
    result["rss_before_variant_bytes"] = rss_before
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
