import torch
from torch import nn

from costlab import meter


def test_saved_tensor_bytes_excludes_weights_saved_as_views():
    # F.linear saves weight.t(), a view of the Parameter: it must not count as an activation.
    layer = nn.Linear(256, 256, bias=False)
    x = torch.randn(4, 256, requires_grad=True)
    saved = meter.saved_tensor_bytes(lambda: layer(x).sum())
    assert saved == x.numel() * 4  # only the input is kept for the weight's gradient
