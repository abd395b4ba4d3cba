"""torch.compile measures (costlab.lessons.fusion): correctness before timing, break-even arithmetic."""
import math

import pytest
import torch

from costlab.lessons import fusion


def test_break_even_is_compile_seconds_over_seconds_saved():
    assert fusion.break_even_steps(10.0, 0.3, 0.1) == pytest.approx(50)
    assert math.isinf(fusion.break_even_steps(10.0, 0.1, 0.1))  # not faster: never pays off
    assert math.isinf(fusion.break_even_steps(10.0, 0.1, 0.2))


def test_outputs_close_compares_every_tensor():
    a = (torch.ones(3), torch.zeros(2))
    assert fusion.outputs_close(a, (torch.ones(3), torch.zeros(2)))[0]
    close, diff = fusion.outputs_close(a, (torch.ones(3), torch.full((2,), 0.1)))
    assert not close and diff == pytest.approx(0.1)
    assert not fusion.outputs_close(a, (torch.ones(3),))[0]


def _tail(x, residual):
    return torch.nn.functional.layer_norm(residual + torch.nn.functional.gelu(x), x.shape[-1:])


def test_eager_vs_compiled_checks_the_compiled_output_then_times_both():
    x, r = fusion.pointwise_inputs(32, 16)
    result = fusion.eager_vs_compiled("tiny", _tail, torch.compile(_tail), (x, r), warmup=1, repeats=2, rounds=1)
    assert result.outputs_match and result.max_abs_diff < 1e-4
    assert result.eager_sec > 0 and result.compiled_sec > 0 and result.compile_sec > 0
    assert result.break_even_steps == fusion.break_even_steps(result.compile_sec, result.eager_sec, result.compiled_sec)


def test_eager_vs_compiled_refuses_to_time_a_wrong_answer():
    x, r = fusion.pointwise_inputs(8, 4)
    with pytest.raises(AssertionError, match="differs from eager"):
        fusion.eager_vs_compiled("wrong", _tail, lambda x, r: _tail(x, r) + 1e-2, (x, r))


def test_grads_close_compares_every_parameter_gradient():
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 4)
    a(x).sum().backward()
    assert not fusion.grads_close(a, b)[0]  # b has no gradients yet
    b(x).sum().backward()
    assert fusion.grads_close(a, b) == (True, 0.0)
    b.bias.grad += 0.5
    close, diff = fusion.grads_close(a, b)
    assert not close and diff == pytest.approx(0.5)


def test_bytes_moved_counts_full_passes():
    assert fusion.bytes_moved(10, 4) == fusion.EAGER_PASSES * 10 * 4 * 4
    assert fusion.bytes_moved(10, 4, 3) == 3 * 160
