"""notebooks/costlab_setup.py, the first line of every notebook: silent where the kit is
installed, a clear message where it is not, an install only on a known hosted runtime."""
import subprocess
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _run(code: str, **env) -> subprocess.CompletedProcess:
    import os

    clean = {k: v for k, v in os.environ.items() if k not in ("COLAB_RELEASE_TAG", "KAGGLE_KERNEL_RUN_TYPE")}
    return subprocess.run([sys.executable, "-c", code], cwd=NOTEBOOKS, capture_output=True, text=True,
                          timeout=120, env={**clean, **env})


def test_silent_where_the_kit_is_installed():
    proc = _run("import costlab_setup")
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr


def test_outside_a_hosted_runtime_it_says_what_to_run_and_installs_nothing():
    proc = _run("import sys; sys.modules['costlab'] = None; import costlab_setup")
    assert proc.returncode != 0
    assert "costlab is not installed in this kernel" in proc.stderr and "install-models" in proc.stderr
    assert "installing" not in proc.stdout


def test_hosted_runtimes_are_recognised():
    code = "import sys; sys.modules['costlab'] = __import__('os'); import costlab_setup as c; print(c.hosted_runtime())"
    assert _run(code).stdout.strip() == "None"
    assert _run(code, KAGGLE_KERNEL_RUN_TYPE="Interactive").stdout.strip() == "Kaggle"
    assert _run(code, COLAB_RELEASE_TAG="release-colab").stdout.strip() == "Colab"


def test_every_notebook_runs_the_setup_first():
    """A fresh hosted runtime meets costlab_setup before any `import costlab` (otherwise the first cell fails with an ImportError)."""
    import nbformat

    for path in sorted(NOTEBOOKS.rglob("*.ipynb")):
        first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        line = first.source.splitlines()[0]
        relative = "../costlab_setup.py" if path.parent.name == "solutions" else "costlab_setup.py"
        assert line.startswith(f"%run {relative}"), f"{path.name}: first code line is {line!r}"
