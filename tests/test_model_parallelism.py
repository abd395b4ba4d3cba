"""11_model_parallelism: the collective counter, and the DDP and FSDP rank scripts the notebook
writes (taken from its %%writefile cells, so the test runs the code the learner reads)."""
import datetime

import pytest
import torch
import torch.distributed as dist

from costlab import distributed
from costlab.lessons import collectives, rank_job

NOTEBOOK = "notebooks/11_model_parallelism.ipynb"


@pytest.fixture
def one_rank_group():
    """A gloo process group of one rank, in this process."""
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=30))
    yield
    dist.destroy_process_group()


def test_the_counter_sizes_each_collective_and_prices_it_with_the_ring(one_rank_group):
    t = torch.ones(1000)  # 4000 bytes
    with collectives.Counter(world_size=4) as comm:  # as if on 4 ranks: the ring's factors
        dist.all_reduce(t)
        dist.all_gather_into_tensor(torch.empty(1000), t)
        dist.reduce_scatter_tensor(torch.empty(1000), t)
        t + 1  # not a collective: not counted
    got = comm.summary()
    assert got["all_reduce"] == {"calls": 1, "full_bytes": 4000, "sent_bytes": 2 * 3 / 4 * 4000}
    assert got["all_gather"]["full_bytes"] == 4000 and got["all_gather"]["sent_bytes"] == 3000
    assert got["reduce_scatter"]["full_bytes"] == 4000  # the input: the whole tensor reduced
    assert got["total"]["calls"] == 3 and got["total"]["sent_bytes"] == 6000 + 3000 + 3000


def _script(tmp_path, name: str):
    """The notebook's %%writefile cell for `name`, written where the launcher can run it."""
    path = tmp_path / f"{name.lower()}.py"
    path.write_text(rank_job.written_script(NOTEBOOK, "{" + name + "}"))
    return path


def test_the_notebook_scripts_shard_the_state_and_keep_the_updates(tmp_path):
    tiny = dict(layers=1, seq_len=16, batch_size=2, n_train=16, warmup=0, rounds=1)
    ddp = distributed.launch(f"{_script(tmp_path, 'DDP_JOB')}:main", nproc=2, timeout_s=180, **tiny)
    fsdp = distributed.launch(f"{_script(tmp_path, 'FSDP_JOB')}:main", nproc=2, timeout_s=180, **tiny)
    for part in ("params", "grads", "optimizer"):  # each FSDP rank holds half (+ AdamW's step counters)
        assert fsdp[0]["held_bytes"][part] == pytest.approx(ddp[0]["held_bytes"][part] / 2, rel=1e-3)
    assert fsdp[0]["loss"] == pytest.approx(ddp[0]["loss"], rel=1e-4)  # the same updates
    assert set(ddp[0]["collectives"]) >= {"all_reduce"}
    assert set(fsdp[0]["collectives"]) >= {"all_gather", "reduce_scatter"}
    assert "all_reduce" not in fsdp[0]["collectives"]
