"""What each rank of a job launched by `costlab.distributed.launch` runs, and where it stands.

`python -m costlab.rank SPEC OUT` (under torchrun, or alone): send stdout/stderr to
OUT/rank<r>.log, call the worker function named in SPEC, and write OUT/rank<r>.json, or
OUT/rank<r>.error.json with the traceback. Worker functions call `context()` to learn their rank,
world size and device.

The target is "module:function" or "path/to/script.py:function". A module's function runs in a
process group this file joins for it (gloo on CPU, NCCL on GPUs); a script is the learner's own
torchrun script (a notebook writes it with %%writefile), so it calls `init_process_group` itself,
as it would when run with torchrun directly.
"""
from __future__ import annotations

import datetime
import faulthandler
import importlib
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from .distributed import DEVICE_ENV, job_device


@dataclass(frozen=True)
class Context:
    """Where this rank stands: rank, world size, local rank on its node, device and backend."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # "gloo" | "nccl" | None (a plain process, no process group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> Context:
    """This rank's context (inside a launched job; a plain process is rank 0 of 1)."""
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    # GPU path (not yet run on GPUs): one GPU per local rank.
    cuda = os.environ.get(DEVICE_ENV, job_device(world)) == "cuda"
    return Context(rank, world, local, torch.device(f"cuda:{local}") if cuda else torch.device("cpu"), backend)


def backend_for(device_kind: str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device_kind == "cuda" else "gloo"


def _redirect_output(path: Path) -> None:
    """Send this process's stdout and stderr (fds 1 and 2, so C++ and children too) to `path`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)  # the launcher never reads half a file


def _rank_main(spec_path: str, out_dir: str) -> None:
    out = Path(out_dir)
    rank = int(os.environ.get("RANK", 0))
    _redirect_output(out / f"rank{rank}.log")
    # On SIGTERM (a timeout, or torchrun stopping us because a peer failed) print every thread's
    # stack first: the report then says where a hung rank was stuck. chain=True: then terminate.
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    try:
        where, func = spec["target"].rsplit(":", 1)
        is_script = where.endswith(".py")
        if "WORLD_SIZE" in os.environ and not is_script:
            _init_process_group(spec["pg_timeout_s"])
        module = _load_script(where) if is_script else importlib.import_module(where)
        result = getattr(module, func)(**spec["kwargs"])
        _write_json(out / f"rank{rank}.json", dict(result or {}))
    except BaseException as exc:  # noqa: BLE001  (report everything, SystemExit included)
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"
        _write_json(out / f"rank{rank}.error.json", {
            "type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc(),
            "where": where, "time": time.time()})
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # peers may be blocked in a collective: do not wait on a clean shutdown
    if _destroy_process_group():
        # The result is written. Skip the interpreter's teardown: gloo's threads can abort it
        # (SIGABRT, "terminate called without an active exception", even after a barrier), and
        # the launcher would then report a finished rank as failed.
        # Only ranks of a process group: a lone worker (12's) keeps its normal exit, which also
        # reaps the processes it started.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _load_script(path: str):
    """Import a worker script by its path, as a module named after the file (not "__main__", so
    its `if __name__ == "__main__":` block, for running it with torchrun directly, stays out)."""
    import importlib.util

    file = Path(path)  # `launch` has checked that it exists, before any rank started
    module_spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[file.stem] = module  # so pickling and dataclasses inside the script find it
    module_spec.loader.exec_module(module)
    return module


def _init_process_group(timeout_s: float) -> None:
    import torch.distributed as dist

    backend = backend_for(os.environ.get(DEVICE_ENV, "cpu"))
    if backend == "nccl":  # GPU path: one GPU per local rank (not yet run on GPUs)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def _destroy_process_group() -> bool:
    """Destroy the default process group if there is one; returns whether there was."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


if __name__ == "__main__":
    _rank_main(sys.argv[1], sys.argv[2])
