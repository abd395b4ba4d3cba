"""Functions that tests run in a fresh process through costlab.isolate."""
import torch


def allocate(mib: int) -> dict:
    block = torch.ones(mib, 2**18)  # mib MiB of float32
    return {"allocated_mib": block.numel() * 4 // 2**20}


def fail() -> dict:
    raise RuntimeError("boom")


def meter_allocation(mib: int) -> dict:
    """The in-process meter around one allocation, in a process with no earlier history (in the
    test runner's own process, memory freed by earlier tests can be reused without any growth)."""
    from costlab import meter

    with meter.Meter() as m:
        block = torch.ones(mib, 2**18)
        del block
    return {"metered_peak_bytes": m.result.peak_mem_bytes, "wall_sec": m.result.wall_sec}
