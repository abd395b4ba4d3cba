import torch
from torch import nn

from costlab import estimate, meter

from . import workers
from costlab.train import enable_checkpointing


def test_linear_flops_are_exactly_2_batch_in_out():
    layer = nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64)
    assert meter.count_flops(lambda: layer(x)) == 2 * 8 * 64 * 32


def test_backward_flops_are_twice_forward_for_a_linear():
    layer = nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64, requires_grad=True)
    total = meter.count_flops(lambda: layer(x).sum().backward())
    assert total == 3 * 2 * 8 * 64 * 32  # forward + grad wrt input + grad wrt weight


def _tiny_llama(layers=4):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def test_saved_bytes_of_a_4_layer_model_drop_with_checkpointing():
    model = _tiny_llama(4)
    ids = torch.randint(0, 128, (2, 32))
    plain = meter.saved_tensor_bytes(lambda: model(input_ids=ids, labels=ids).loss)
    enable_checkpointing(model)
    model.train()
    checkpointed = meter.saved_tensor_bytes(lambda: model(input_ids=ids, labels=ids).loss)
    assert checkpointed < plain / 2, (plain, checkpointed)


def test_predicted_weights_grads_adamw_states_equal_the_measured_bytes():
    model = _tiny_llama(2)
    ids = torch.randint(0, 128, (2, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    measured = meter.state_bytes(model, optimizer)
    predicted = estimate.state_bytes(model, "adamw")
    assert predicted.weights_bytes == measured["weights"]
    assert predicted.grad_bytes == measured["grads"]
    assert predicted.optimizer_state_bytes == measured["optimizer"]


def test_frozen_parameters_get_no_grad_or_state_bytes_in_the_prediction():
    model = _tiny_llama(2)
    for p in model.model.embed_tokens.parameters():
        p.requires_grad_(False)
    full = estimate.state_bytes(_tiny_llama(2), "adamw")
    frozen = estimate.state_bytes(model, "adamw")
    embed = model.model.embed_tokens.weight.numel() * 4
    assert full.grad_bytes - frozen.grad_bytes == embed


def test_timing_discards_warmup_and_reports_the_median():
    calls = []
    timing = meter.time_fn(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and len(timing.samples_sec) == 5 and len(timing.warmup_sec) == 2
    assert min(timing.samples_sec) <= timing.median_sec <= max(timing.samples_sec)


def test_6nd_estimate():
    assert estimate.training_flops(1e6, 1e3) == 6e9


def test_price_labels_table_values_as_estimates(monkeypatch):
    monkeypatch.setenv("COSTLAB_POWER_W", "100")
    monkeypatch.setenv("COSTLAB_PRICE_USD_PER_HOUR", "3.6")
    values, estimated = meter.price(3600)
    assert values["energy_j"] == 360000 and values["cost_usd"] == 3.6
    assert set(estimated) == {"energy_j", "cost_usd", "co2_g"}
    values, estimated = meter.price(3600, energy_j=1000.0)  # a meter reading is not an estimate
    assert values["energy_j"] == 1000.0 and "energy_j" not in estimated


def test_meter_reports_a_positive_memory_peak_for_an_allocation():
    from costlab.isolate import isolate

    result = isolate(workers.meter_allocation, mib=256)
    assert result["wall_sec"] > 0
    assert result["metered_peak_bytes"] is None or result["metered_peak_bytes"] > 200 * 2**20


def test_isolate_runs_a_variant_in_a_fresh_process_and_reports_its_peak():
    from costlab.isolate import isolate

    result = isolate(workers.allocate, mib=300)
    assert result["allocated_mib"] == 300
    assert result["peak_mem_bytes"] > 250 * 2**20
    assert result["peak_mem_kind"] == "process_peak_rss_net"


def test_isolate_reports_the_workers_error():
    import pytest

    from costlab.isolate import IsolatedRunFailed, isolate

    with pytest.raises(IsolatedRunFailed, match="boom"):
        isolate(workers.fail)


def test_8bit_adamw_prediction_follows_bitsandbytes_small_tensor_rule():
    """bitsandbytes keeps 32-bit states for tensors under 4096 values: a rank-8 adapter on a
    128-wide model (1024 values per matrix) saves nothing with 8-bit AdamW, a 576-wide one does.
    The prediction is checked against the states bitsandbytes actually allocates."""
    import bitsandbytes as bnb

    for width, saves in ((128, False), (576, True)):
        params = [torch.nn.Parameter(torch.randn(8, width)), torch.nn.Parameter(torch.randn(width, 8))]
        opt = bnb.optim.AdamW8bit(params, lr=1e-3)
        for q in params:
            q.grad = torch.randn_like(q)
        opt.step()
        measured = meter.state_bytes(torch.nn.ParameterList(params), opt)["optimizer"]
        predicted = estimate.optimizer_bytes_for([q.numel() for q in params], "adamw8bit")
        full = estimate.optimizer_bytes_for([q.numel() for q in params], "adamw")
        assert (predicted < full / 2) is saves
        assert measured == predicted, (width, measured, predicted)  # scales and shared maps included


class FakeNVML:
    """NVML over fake GPUs: readings[i] lists GPU i's energy counter (mJ), read in turn (the last
    one repeats); uuids maps a UUID to its GPU number."""

    def __init__(self, readings: dict[int, list[int]], uuids: dict[str, int] | None = None):
        self.readings, self.uuids = {i: list(v) for i, v in readings.items()}, uuids or {}

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.readings)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return self.uuids[uuid]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        values = self.readings[handle]
        return values.pop(0) if len(values) > 1 else values[0]


def test_the_energy_counter_sums_every_gpu_a_job_used():
    """NVML reads one GPU per handle: a job on N GPUs must count all N (it read GPU 0 alone)."""
    from costlab.meter import EnergyCounter

    # two GPUs whose counters stand at 1000 and 3000 mJ, then move by 500 and 700
    counter = EnergyCounter(nvml=FakeNVML({0: [1000, 1500], 1: [3000, 3700]}))
    assert counter.gpus == 2
    assert counter.read_j() == (1500 + 3700) / 1000.0  # the probe read once at start-up


def test_the_energy_counter_reads_the_job_s_gpus_through_cuda_visible_devices(monkeypatch):
    """NVML numbers every GPU of the machine; CUDA only the visible ones. A job on cuda:0 and
    cuda:1 with CUDA_VISIBLE_DEVICES=3,GPU-b reads NVML's GPU 3 and the GPU of UUID GPU-b."""
    from costlab.meter import EnergyCounter

    def four_gpus():  # at 1, 2, 3 and 4 J; GPU 1 has the UUID "GPU-b"
        return FakeNVML({i: [1000 * (i + 1)] for i in range(4)}, uuids={"GPU-b": 1})

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-b,0")
    assert EnergyCounter(nvml=four_gpus(), devices=[0, 1]).read_j() == 4.0 + 2.0  # the job's two
    assert EnergyCounter(nvml=four_gpus()).read_j() == 4.0 + 2.0 + 1.0  # every GPU CUDA sees
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert EnergyCounter(nvml=four_gpus(), devices=[2]).read_j() == 3.0


def test_no_nvml_means_no_energy_reading():
    from costlab.meter import EnergyCounter

    class Broken:
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    assert EnergyCounter(nvml=Broken()).read_j() is None
