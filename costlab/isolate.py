"""Run one variant in a fresh Python process, so its memory peak is its own.

A variant is a function, usually one defined in the notebook:

    def lora(model):
        return get_peft_model(model, LoraConfig(r=8, target_modules=models.lora_targets(model)))

    run = isolate(workloads.lm_training, cut=lora)

`isolate(fn, *args, **kwargs)` sends `fn` and its arguments to a new process with cloudpickle
(the serializer joblib/loky and Ray use): a function defined in a notebook or script goes by
value, its code and what it refers to included; one from an importable module by reference.
The new process imports torch and transformers, unpickles the call (which imports what the
function needs), notes its RSS, resets the peak, calls the function, and returns the function's
dict plus `peak_mem_bytes`: the CUDA allocator peak, or the process's peak RSS net of its RSS
before the call (imports alone weigh hundreds of MB and would hide the difference).
"""
from __future__ import annotations

import inspect
import json
import os
import pickle
import subprocess
import sys
import tempfile
from typing import Callable

# What a variant may carry into its process: more than this is data the function captured from
# the notebook (a model, a data set) that would be unpickled before the peak is measured, so the
# peak would not count it. Build such things inside the function instead.
MAX_PAYLOAD_BYTES = 32 * 2**20


class IsolatedRunFailed(RuntimeError):
    pass


class UnpicklableVariant(TypeError):
    """The variant refers to something that cannot be sent to another process."""


def _label(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _captures(fn: Callable) -> dict[str, object]:
    """What a function refers to besides its arguments: its closure and the globals its code names."""
    found: dict[str, object] = {}
    code = getattr(fn, "__code__", None)
    if code is None:
        return found
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
        try:
            found[name] = cell.cell_contents
        except ValueError:  # an empty cell: nothing captured yet
            pass
    names = set(code.co_names)
    for const in code.co_consts:  # names used by nested functions and comprehensions
        if inspect.iscode(const):
            names |= set(const.co_names)
    module_globals = getattr(fn, "__globals__", {})
    found.update({n: module_globals[n] for n in names if n in module_globals})
    return found


def _dumps(fn: Callable, args: tuple, kwargs: dict) -> bytes:
    """cloudpickle the call, or say which captured name or argument could not be pickled."""
    import cloudpickle

    try:
        return cloudpickle.dumps((fn, args, kwargs))
    except Exception as exc:  # noqa: BLE001 - pickling raises TypeError, PicklingError, AttributeError...
        suspects = {**{f"global or closure name {k!r}": v for k, v in _captures(fn).items()},
                    **{f"argument {i}": v for i, v in enumerate(args)},
                    **{f"argument {k!r}": v for k, v in kwargs.items()}}
        for where, value in suspects.items():
            try:
                cloudpickle.dumps(value)
            except Exception as inner:  # noqa: BLE001
                raise UnpicklableVariant(
                    f"variant {_label(fn)!r} cannot be sent to a fresh process: its {where} is a "
                    f"{type(value).__name__}, which cannot be pickled ({type(inner).__name__}: {inner}). "
                    f"Create it inside the function, or pass something picklable (a path, a number) "
                    f"and build it there.") from inner
        raise UnpicklableVariant(f"variant {_label(fn)!r} cannot be sent to a fresh process: "
                                 f"{type(exc).__name__}: {exc}") from exc


def _check_size(fn: Callable, payload: bytes, args: tuple, kwargs: dict) -> None:
    if len(payload) <= MAX_PAYLOAD_BYTES:
        return
    import cloudpickle

    sizes = {}
    for name, value in {**_captures(fn), **{str(i): a for i, a in enumerate(args)}, **kwargs}.items():
        try:
            sizes[name] = len(cloudpickle.dumps(value))
        except Exception:  # noqa: BLE001 - the whole call pickled, so this is rare; skip it
            continue
    biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    named = ", ".join(f"{k!r} ({v / 2**20:.0f} MiB)" for k, v in biggest)
    raise UnpicklableVariant(
        f"variant {_label(fn)!r} carries {len(payload) / 2**20:.0f} MiB into its fresh process "
        f"(largest: {named}); memory it brings would escape the peak. Build the model or data "
        f"inside the function instead of capturing it from the notebook.")


def isolate(fn: Callable[..., dict], /, *args, timeout_s: float = 900, preload: tuple[str, ...] = (),
            **kwargs) -> dict:
    """Call `fn(*args, **kwargs)` in a fresh process; return its result dict plus its peak memory.

    preload: modules to import before the RSS baseline is taken, like torch and transformers
    (e.g. ("peft",): peft pulls in bitsandbytes, ~150 MB of libraries that no variant's model or
    data owns; left out, they would count in every LoRA variant's peak).
    """
    if not callable(fn):
        raise TypeError(f"isolate() takes the variant's function, got {type(fn).__name__} {fn!r}")
    payload = _dumps(fn, args, kwargs)
    _check_size(fn, payload, args, kwargs)
    label = _label(fn)
    with tempfile.TemporaryDirectory() as tmp:
        call_path, out_path = os.path.join(tmp, "call.pkl"), os.path.join(tmp, "out.json")
        with open(call_path, "wb") as f:
            pickle.dump({"payload": payload, "preload": list(preload)}, f)
        # The child sees the caller's import path, so functions pickled by reference (from the
        # caller's own modules, e.g. tests/) import there as they do here.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            proc = subprocess.run([sys.executable, "-m", "costlab.isolate", call_path, out_path],
                                  capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise IsolatedRunFailed(f"{label} ran past {timeout_s:.0f} s in its fresh process and was stopped") from None
        if proc.returncode != 0 or not os.path.exists(out_path):
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise IsolatedRunFailed(f"{label} failed in its fresh process (exit {proc.returncode}):\n{tail}")
        with open(out_path) as f:
            return json.load(f)


def _main(call_path: str, out_path: str) -> None:
    import importlib

    import cloudpickle
    import torch
    import transformers  # noqa: F401  (imported before the baseline, like the variant's own imports)

    from . import meter

    with open(call_path, "rb") as f:
        call = pickle.load(f)  # written by isolate() above, in the parent process, a moment ago
    for name in call["preload"]:
        importlib.import_module(name)
    fn, args, kwargs = cloudpickle.loads(call["payload"])  # imports what the function refers to
    del call
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    meter.reset_peak_rss()
    rss_before = meter.rss_bytes()
    result = dict(fn(*args, **kwargs))
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
