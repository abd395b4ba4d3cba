"""What the browser tests share: Debian's Chromium (never a downloaded browser), its flags, and
the skip with its reason where it is absent. Playwright drives it via `executable_path`."""
import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("COSTLAB_CHROMIUM", "/usr/bin/chromium"))
# No sandbox (CI runs as root in a container), no GPU, and none of Chromium's own network chatter.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

requires_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"headless Chromium not found at {CHROMIUM}: install Debian's chromium package "
           "(`apt-get install chromium`; .ci/run does this in CI) or set COSTLAB_CHROMIUM")


def launch(pw):
    """Chromium through Playwright, from the system package."""
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=120_000)
