"""The first line of every notebook: makes sure the kit can be imported in this kernel.

In a clone set up with `make` (or `pip install`), it does nothing. In a fresh hosted runtime
(Colab, Kaggle) opened from a clone, it installs the kit from that clone (`pip install ..`,
which keeps the runtime's own torch) and the two model packages (without their dependencies).
Anywhere else it stops with the one line to run: installing into an unknown environment could
pull a multi-GB torch that the learner did not ask for.
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def hosted_runtime() -> str | None:
    """The known hosted notebook service this kernel runs on, if any."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "Colab"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return "Kaggle"
    return None


def ensure_costlab() -> None:
    try:
        import costlab  # noqa: F401
        return
    except ImportError:
        pass
    host = hosted_runtime()
    if host is None or not (REPO / "pyproject.toml").exists():
        raise ModuleNotFoundError(
            "costlab is not installed in this kernel. In the repository run `make lab` (it creates the "
            "environment), or in this environment: `pip install <path of the repository>` then "
            "`python -m costlab install-models` (see the README, 'Without make').") from None
    print(f"{host}: installing costlab from {REPO} (the runtime's torch stays)...", flush=True)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", str(REPO)])
    subprocess.check_call([sys.executable, "-m", "costlab", "install-models"])
    importlib.invalidate_caches()  # the running kernel's import system has not seen the new package


ensure_costlab()
