"""The what-if calculator in a real browser: JupyterLab started headless on loopback (a random free
port, a token, a temporary root folder holding a one-cell notebook that calls the calculator),
opened in Debian's headless Chromium driven by Playwright; once the notebook's kernel is ready the
cell is run through JupyterLab's own command (not a key press, which depends on focus), the panel
renders, a toggle is clicked and the predicted memory must change. When the panel does not
appear, the failure shows what the page did show (the cell's output, the kernel's status) and the
server log, so a CI failure can be read without rerunning it."""
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.browser import launch, requires_chromium

pytestmark = requires_chromium

CELL = ("import costlab.lessons.calculator\n"
        "costlab.lessons.calculator.panel(model='SmolLM2-360M', seq_len=1024, batch=8, device='A10G')")
MEMORY = ".costlab-calc-memory"
TOGGLE = ".costlab-toggle-grad_checkpointing input[type=checkbox]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(path) -> None:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "calc", "metadata": {},
                     "outputs": [], "source": CELL}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def _start_lab(root, port: int, token: str, tmp_path) -> subprocess.Popen:
    # A fresh settings folder that also answers "no" to the news prompt (it would cover the page).
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "IPYTHONDIR": str(tmp_path / "ipython"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly",
           "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run the cell by command
           "--ServerApp.allow_root=True"]  # CI containers run as root
    # Its own session, so that the server and its kernel can be stopped together.
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"),
                            start_new_session=True)


def _wait_ready(proc, port: int, token: str, log, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer on port {port} within {timeout_s:.0f} s")


def _stop_lab(proc, port: int, token: str) -> None:
    try:  # the server's own shutdown stops the kernels it started
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/shutdown", method="POST",
                                     headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(req, timeout=10)
        proc.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# Wait for the notebook's kernel session, then run every cell through JupyterLab's command registry.
RUN_WHEN_READY = """async () => {
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  await panel.context.ready;
  await panel.sessionContext.ready;
  await app.commands.execute('notebook:run-all-cells');
  return panel.sessionContext.session && panel.sessionContext.session.kernel
         ? panel.sessionContext.session.kernel.name : 'no kernel';
}"""


def _what_the_page_shows(page, log) -> str:
    try:
        outputs = page.locator(".jp-OutputArea").all_inner_texts()
        status = page.evaluate("() => { const s = window.jupyterapp.shell.currentWidget.sessionContext;"
                               " return s.kernelDisplayStatus; }")
    except Exception as err:  # the page itself may be the problem
        outputs, status = [f"(could not read the page: {err})"], "unknown"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else "(no log)"
    return f"kernel status: {status}\ncell output: {outputs!r}\nserver log tail:\n{tail}"


def _memory_text(page) -> str:
    return page.locator(MEMORY).first.inner_text()


def _bytes(text: str) -> float:
    number, unit = re.fullmatch(r"\s*([\d.]+) (B|KiB|MiB|GiB)\s*", text).groups()
    return float(number) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]


def test_a_toggle_changes_the_predicted_memory_in_jupyterlab(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    root = tmp_path / "root"
    root.mkdir()
    _notebook(root / "calculator.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    proc = _start_lab(root, port, token, tmp_path)
    try:
        _wait_ready(proc, port, token, tmp_path / "lab.log")
        with sync_api.sync_playwright() as pw:
            browser = launch(pw)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/lab/tree/calculator.ipynb?token={token}",
                          timeout=120_000)
                page.locator(".jp-NotebookPanel .jp-CodeCell").first.wait_for(state="visible", timeout=120_000)
                page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                       " && window.jupyterapp.shell.currentWidget.sessionContext",
                                       timeout=120_000)
                kernel = page.evaluate(RUN_WHEN_READY)
                try:
                    page.locator(MEMORY).first.wait_for(state="visible", timeout=180_000)
                except sync_api.TimeoutError:
                    page.screenshot(path=str(tmp_path / "calculator-timeout.png"))
                    pytest.fail(f"the calculator panel did not render within 180 s (kernel {kernel!r})\n"
                                + _what_the_page_shows(page, tmp_path / "lab.log"))
                before = _memory_text(page)
                assert re.search(r"\d", before), f"no predicted memory shown: {before!r}"
                page.locator(TOGGLE).first.click()
                page.wait_for_function(
                    "([sel, old]) => { const e = document.querySelector(sel); return e && e.innerText !== old; }",
                    arg=[MEMORY, before], timeout=60_000)
                after = _memory_text(page)
                page.screenshot(path=str(tmp_path / "calculator.png"))
            finally:
                browser.close()
    finally:
        _stop_lab(proc, port, token)
    assert after != before, f"toggling checkpointing left the predicted memory at {before}"
    assert _bytes(after) < _bytes(before), f"checkpointing should lower the prediction: {before} -> {after}"
