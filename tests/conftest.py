import os

import pytest

# Tests never reach a hub and write results under a temporary folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("COSTLAB_PROFILE", "smoke")


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COSTLAB_RESULTS", str(tmp_path))
    return tmp_path
