"""The worker script of 10_data_parallelism, as the notebook writes it (its %%writefile cell):
on 2 ranks, DDP with accumulation under no_sync makes the update of one process on the global
batch, and the replicas end identical. One real 2-rank torchrun job of a 1-block model (seconds)."""
from pathlib import Path

from costlab import distributed
from costlab.lessons import rank_job

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "10_data_parallelism.ipynb"
TINY = dict(layers=1, seq_len=16, batch_size=4, n_train=64, warmup=1, rounds=1)


def test_the_notebooks_worker_matches_one_process_on_the_global_batch(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(rank_job.written_script(NOTEBOOK, "{WORKER}"))
    ranks = distributed.launch(f"{script}:main", nproc=2, accum=2, timeout_s=180, **TINY)
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["equivalence"]["k"] == 4 for r in ranks)  # 2 ranks x 2 micro-batches
    assert all(r["equivalence"]["vs_one_batch"]["allclose"] for r in ranks)
    assert len({r["fingerprint"] for r in ranks}) == 1
    assert set(ranks[0]["step_time_sec"]) == {"step", "backward_synced", "backward_no_sync"}
    assert ranks[0]["allreduce_sec"] > 0


def test_written_script_names_a_missing_cell(tmp_path):
    import nbformat
    import pytest

    path = tmp_path / "empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")]), path)
    with pytest.raises(LookupError, match="WORKER"):
        rank_job.written_script(path, "{WORKER}")
