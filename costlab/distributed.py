"""Launch torch.distributed jobs from a notebook: torchrun, a wall-clock timeout, each rank's
result or error, and nothing left running afterwards.

    results = launch("workers/ddp_worker.py:main", nproc=2, timeout_s=300, steps=5)
    results[0]["step_time_sec"]          # one dict per rank, in rank order

The worker is a function in a script file (a notebook writes it with %%writefile, so the learner
sees every line a rank runs; the script then calls `init_process_group` itself) or in a costlab
module ("module:function"; the process group is then joined for it). Each rank runs
`python -m costlab.rank SPEC OUT` under torchrun (see costlab/rank.py): it calls the function and
writes its result or its error to files this launcher reads.

- A rank that raises: torchrun stops the other ranks, and `LaunchFailed` names the rank and its
  error (the traceback's last lines).
- A rank that hangs: at `timeout_s` every process of the job gets SIGTERM (each rank then writes
  where it was stuck to its log, via faulthandler), then SIGKILL after a short grace;
  `LaunchFailed` names the ranks that did not finish and where they were.
torchrun starts each worker in a session of its own, so killing torchrun's process group is not
enough: the launcher tracks every descendant process while it waits and kills each one.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ENTRY = "costlab.rank"  # the module each rank runs: python -m costlab.rank SPEC OUT
DEVICE_ENV = "COSTLAB_DIST_DEVICE"  # "cuda" | "cpu": the device kind every rank of a job uses


def job_device(nproc: int) -> str:
    """"cuda" when there is a GPU for each rank, else "cpu" (ranks then share the CPU's cores,
    so a one-GPU machine still runs a 2-rank job, on its CPU)."""
    return "cuda" if torch.cuda.is_available() and torch.cuda.device_count() >= nproc else "cpu"


def devices_available(kind: str | None = None) -> int:
    """How many workers this machine can give one device each: GPUs, else CPU cores."""
    kind = kind or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def world_sizes(limit: int) -> list[int]:
    """1, 2, 4, ... up to `limit`, each rank with a device of its own where the machine has them:
    GPUs when there are at least 2, else CPU cores. Always includes 2 (on a 1-core machine the
    two ranks share it: the checks of correctness still hold, the timings mean little)."""
    kind = "cuda" if torch.cuda.is_available() and torch.cuda.device_count() >= 2 else "cpu"
    top = max(2, min(limit, devices_available(kind)))
    sizes, n = [], 1
    while n <= top:
        sizes.append(n)
        n *= 2
    return sizes


# ---------------------------------------------------------------- launching


@dataclass(frozen=True)
class RankReport:
    rank: int
    status: str  # "ok" | "error" (it raised) | "stopped" (killed before it finished)
    error: str  # the exception, or why it was stopped
    log_tail: str  # the last lines of its stdout/stderr (stack dump included when stopped)
    failed_at: float | None = None  # time.time() of its error: the first to fail is the cause


class LaunchFailed(RuntimeError):
    """A job that did not finish: which rank failed or hung, and with what."""

    def __init__(self, message: str, reports: list[RankReport], pids: list[int],
                 elapsed_sec: float, timed_out: bool):
        super().__init__(message)
        self.reports, self.pids, self.elapsed_sec, self.timed_out = reports, pids, elapsed_sec, timed_out


def command(spec: str, out: str, nproc: int, *, nnodes: int = 1,
            rdzv_endpoint: str | None = None) -> list[str]:
    """The torchrun command line of a job. One node: a standalone rendezvous on a free port;
    several nodes: the same line on each, with `nnodes` and a shared `rdzv_endpoint` (host:port)."""
    where = (["--standalone"] if nnodes == 1 and rdzv_endpoint is None else
             [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"])
    # --max-restarts=0: a failure is reported, not retried; --monitor-interval: seconds between
    # torchrun's checks of its workers, so a failed rank stops the others within about that.
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={nproc}",
            "--max-restarts=0", "--monitor-interval=0.2", "-m", ENTRY, spec, out]


def shell_command(nproc: int, *, nnodes: int = 1, rdzv_endpoint: str | None = None) -> str:
    """`command` as a readable shell line (for showing how a job scales to more GPUs or nodes)."""
    argv = command("SPEC.json", "OUT_DIR", nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint)
    return shlex.join(["torchrun", *argv[3:]])


def launch(target: str, *, nproc: int = 1, timeout_s: float = 600, threads_per_rank: int = 1,
           torchrun: bool = True, pg_timeout_s: float | None = None, **kwargs) -> list[dict]:
    """Run `module:function(**kwargs)` or `script.py:function(**kwargs)` on `nproc` ranks;
    return each rank's dict, in rank order.

    threads_per_rank: OMP/torch threads of each rank (on CPU, 1 gives each rank one core).
    torchrun=False: one plain process (no process group), with the same timeout and reports.
    pg_timeout_s: how long a collective waits for a missing peer before it errors
    (default: the job's timeout, so a hung peer is caught by whichever comes first).
    Raises LaunchFailed, naming each rank that failed or did not finish, and only after every
    process of the job is gone.
    """
    if ":" not in target:
        raise ValueError(f"target must be 'module:function' or 'path/to/script.py:function', got {target!r}")
    where = target.rsplit(":", 1)[0]
    if where.endswith(".py"):  # ranks may start elsewhere: hand them the script's absolute path
        if not Path(where).is_file():
            raise FileNotFoundError(f"worker script {where} not found: run the cell that writes it first")
        target = f"{Path(where).resolve()}:{target.rsplit(':', 1)[1]}"
    if not torchrun and nproc != 1:
        raise ValueError("torchrun=False runs one plain process; use torchrun for nproc > 1")
    with tempfile.TemporaryDirectory(prefix="costlab-job-") as tmp:
        out = Path(tmp)
        spec = out / "spec.json"
        spec.write_text(json.dumps({"target": target, "kwargs": kwargs, "threads": threads_per_rank,
                                    "pg_timeout_s": pg_timeout_s or timeout_s}))
        argv = (command(str(spec), str(out), nproc) if torchrun
                else [sys.executable, "-m", ENTRY, str(spec), str(out)])
        threads = str(threads_per_rank)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "PYTHONUNBUFFERED": "1", DEVICE_ENV: job_device(nproc)}
        started = time.perf_counter()
        seen: dict = {}
        finished = False
        with open(out / "launcher.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            try:  # whatever happens here (a timeout, Ctrl-C in the notebook), stop every process
                finished = _wait(proc, timeout_s, seen)
            finally:
                pids, left = _stop(proc, seen)
        elapsed = time.perf_counter() - started
        reports = [_rank_report(out, r, timed_out=not finished, timeout_s=timeout_s) for r in range(nproc)]
        if finished and proc.returncode == 0 and all(r.status == "ok" for r in reports):
            return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
        launcher_tail = _tail(out / "launcher.log", 8)
        raise LaunchFailed(_failure_message(target, nproc, reports, elapsed, finished, timeout_s,
                                            proc.returncode, launcher_tail, left),
                           reports, pids, elapsed, not finished)


def _wait(proc: subprocess.Popen, timeout_s: float, seen: dict) -> bool:
    """Wait for the launcher; note in `seen` every descendant while it lives (workers outlive
    torchrun's process group). Returns whether it finished before the timeout."""
    import psutil

    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            for child in root.children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.Error:
            pass
        if proc.poll() is not None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _stop(proc: subprocess.Popen, seen: dict, grace_s: float = 3.0) -> tuple[list[int], list[int]]:
    """SIGTERM every process of the job (ranks dump their stacks), then SIGKILL what is left.
    Returns (every pid of the job, those still running afterwards: none, unless unkillable)."""
    import psutil

    alive = [p for p in seen.values() if _running(p)]
    if proc.poll() is None:
        alive.append(psutil.Process(proc.pid))
    for p in alive:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=grace_s)
    try:  # anything else still in torchrun's own process group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    return sorted(set(seen) | {proc.pid}), [p.pid for p in seen.values() if _running(p)]


def _running(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])


def _rank_report(out: Path, rank: int, *, timed_out: bool, timeout_s: float) -> RankReport:
    tail = _tail(out / f"rank{rank}.log", 12)
    if (out / f"rank{rank}.json").exists():
        return RankReport(rank, "ok", "", tail)
    error_file = out / f"rank{rank}.error.json"
    if error_file.exists():
        err = json.loads(error_file.read_text())
        message = err["message"] if len(err["message"]) < 300 else err["message"][:300] + " ..."
        return RankReport(rank, "error", f"{err['type']}: {message} (at {err['where']})", tail,
                          err["time"])
    why = (f"did not finish within {timeout_s:.0f} s; stopped" if timed_out else
           "stopped before it finished (torchrun stops the other ranks when one fails)")
    return RankReport(rank, "stopped", why, tail or "(no output: it was still starting up)")


def _failure_message(target, nproc, reports, elapsed, finished, timeout_s, returncode, launcher_tail,
                     left) -> str:
    gone = (f"processes {left} could not be stopped" if left else "no process is left running")
    head = (f"{target} on {nproc} rank(s) " +
            (f"ran past its {timeout_s:.0f} s timeout and was stopped" if not finished
             else f"failed (exit code {returncode})") + f" after {elapsed:.1f} s; {gone}.")
    lines = [head]
    errors = sorted((r for r in reports if r.status == "error"), key=lambda r: r.failed_at)
    others = [r for r in reports if r.status != "error"]
    for i, r in enumerate([*errors, *others]):
        if r.status == "ok":
            lines.append(f"  rank {r.rank}: finished")
            continue
        first = " (failed first)" if r.status == "error" and i == 0 and len(errors) > 1 else ""
        lines.append(f"  rank {r.rank}{first}: {r.error}")
        if r.status == "stopped" and r.log_tail:
            lines.append("    its last output (where it was):\n" + _indent(r.log_tail, 6))
    if not any(r.status == "error" for r in reports) and launcher_tail:
        lines.append("  torchrun said:\n" + _indent(launcher_tail, 4))
    return "\n".join(lines)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())
