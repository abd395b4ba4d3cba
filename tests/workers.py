"""Functions that tests run in a fresh process through costlab.isolate."""
import torch


def allocate(mib: int) -> dict:
    block = torch.ones(mib, 2**18)  # mib MiB of float32
    return {"allocated_mib": block.numel() * 4 // 2**20}


def fail() -> dict:
    raise RuntimeError("boom")
