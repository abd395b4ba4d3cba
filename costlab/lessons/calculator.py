"""The what-if calculator: an ipywidgets panel that predicts what a fine-tuning plan will cost
before anyone rents a GPU: memory (fits / does not fit), time, $ and CO2, with its assumptions.

    costlab.lessons.calculator.panel()                      # in a notebook cell: the panel
    calc = costlab.lessons.calculator.panel(); calc.prediction()   # the same numbers as data

Every number comes from `costlab.lessons.plans.predict_plan`; notebook 14 checks them against measured
runs. The toggles are `plans.CUTS`, in the order the capstone stacks them. Devices are the rows of `costlab.hardware`'s tables, plus this machine.
"""
from __future__ import annotations

import html

from .. import hardware, metrics
from . import plans
from ..estimate import ModelShape

THIS_MACHINE = "this machine"
# Published configs (the models' config.json files); parameters are counted from them.
PRESETS: dict[str, ModelShape] = {
    "SmolLM2-135M": plans.llama_shape(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536,
                                      vocab=49152, tied=True),
    "SmolLM2-360M": plans.llama_shape(hidden=960, layers=32, heads=15, kv_heads=5, intermediate=2560,
                                      vocab=49152, tied=True),
    "SmolLM2-1.7B": plans.llama_shape(hidden=2048, layers=24, heads=32, kv_heads=32, intermediate=8192,
                                      vocab=49152, tied=True),
    "Llama-3.1-8B": plans.llama_shape(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336,
                                      vocab=128256, tied=False),
    "Llama-3.1-70B": plans.llama_shape(hidden=8192, layers=80, heads=64, kv_heads=8, intermediate=28672,
                                       vocab=128256, tied=False),
}


def _device(name: str) -> hardware.Device:
    return hardware.detect() if name == THIS_MACHINE else hardware.table_device(name)


def _bytes(value: float | None) -> str:
    return metrics.format_value("peak_mem_bytes", value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def render(pred: plans.PlanPrediction) -> str:
    """The prediction as HTML: memory first (fits or not), then time, $, CO2, then assumptions."""
    m = pred.memory
    if pred.fits is None:
        verdict, css = "device memory unknown", "unknown"
    elif pred.fits:
        verdict, css = f"fits in {_bytes(pred.capacity_bytes)}", "fits"
    else:
        verdict, css = f"does NOT fit in {_bytes(pred.capacity_bytes)}", "does-not-fit"
    parts = ", ".join(f"{k} {_bytes(v)}" for k, v in m.as_dict().items() if k != "total")
    money = "unknown" if pred.cost_usd is None else f"${pred.cost_usd:,.2f}"
    energy = "unknown" if pred.energy_j is None else f"{pred.energy_j / 3.6e6:.3g} kWh"
    co2 = "unknown" if pred.co2_g is None else f"{pred.co2_g / 1000:.3g} kg"
    rows = [("predicted memory", f'<span class="costlab-calc-memory">{_bytes(m.total_bytes)}</span> '
                                 f'(+ {_bytes(pred.reserve_bytes)} reserve): '
                                 f'<b class="costlab-calc-fits {css}">{verdict}</b>'),
            ("memory by part", parts),
            ("FLOPs per step", metrics.format_value("flops", pred.flops_per_step)),
            ("step time", f'<span class="costlab-calc-step">{_duration(pred.step_sec)}</span>'),
            (f"time for {pred.plan.train_tokens:.3g} tokens", _duration(pred.total_sec)),
            ("cost", f'<span class="costlab-calc-cost">{money}</span>'),
            ("energy / CO2", f"{energy} / {co2}")]
    body = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                   for k, v in rows)
    notes = "".join(f"<li>{html.escape(a)}</li>" for a in pred.assumptions)
    return (f"<div class='costlab-calc'><table>{body}</table>"
            f"<details><summary>assumptions</summary><ul>{notes}</ul></details></div>")


class Calculator:
    """The panel's widgets and the prediction they describe; displays as the panel."""

    def __init__(self, *, shapes: dict[str, ModelShape] | None = None, model: str | None = None,
                 seq_len: int = 1024, batch: int = 8, train_tokens: float = 1e8, device: str = "H100",
                 cuts=(), lora_r: int = 8, utilization: float = plans.DEFAULT_UTILIZATION, padding_share: float = 0.0,
                 measured_flops_per_sec: float | None = None):
        import ipywidgets as w

        self.shapes = {**(shapes or {}), **PRESETS}
        self.measured_flops_per_sec = measured_flops_per_sec  # used for this machine only
        self.lora_r = lora_r
        devices = [k for k in hardware.PRICE_USD_PER_HOUR if k != "cpu-core"] + [THIS_MACHINE]
        style = {"description_width": "150px"}
        self.model = w.Dropdown(options=list(self.shapes), value=model or next(iter(self.shapes)),
                                description="model", style=style)
        self.seq_len = w.BoundedIntText(value=seq_len, min=1, max=1_000_000, description="sequence length",
                                        style=style)
        self.batch = w.BoundedIntText(value=batch, min=1, max=100_000, description="batch (sequences)",
                                      style=style)
        self.tokens = w.FloatLogSlider(value=train_tokens, base=10, min=4, max=13, step=0.25,
                                       description="tokens to train on", readout_format=".2g", style=style)
        self.device = w.Dropdown(options=devices, value=device, description="device", style=style)
        self.utilization = w.FloatSlider(value=utilization, min=0.05, max=1.0, step=0.05,
                                         description="utilization (assumed)", style=style)
        self.padding = w.FloatSlider(value=padding_share, min=0.0, max=0.95, step=0.01,
                                     description="padding share", style=style)
        self.toggles = {}
        for cut in plans.CUTS:
            box = w.Checkbox(value=cut.name in cuts, description=cut.toggle, indent=False)
            box.add_class(f"costlab-toggle-{cut.name}")
            self.toggles[cut.name] = box
        self.output = w.HTML()
        for control in (self.model, self.seq_len, self.batch, self.tokens, self.device, self.utilization,
                        self.padding, *self.toggles.values()):
            control.observe(self._update, names="value")
        self.widget = w.VBox([w.HTML("<b>What-if calculator</b>: a fine-tuning plan's predicted cost"),
                              w.HBox([w.VBox([self.model, self.seq_len, self.batch, self.tokens, self.device,
                                              self.utilization, self.padding]),
                                      w.VBox(list(self.toggles.values()))]),
                              self.output])
        self.widget.add_class("costlab-calculator")
        self._update()

    def plan(self) -> plans.Plan:
        base = plans.Plan(self.shapes[self.model.value], int(self.seq_len.value), int(self.batch.value),
                          float(self.tokens.value), padding_share=float(self.padding.value))
        return plans.with_cuts(base, [n for n, box in self.toggles.items() if box.value], lora_r=self.lora_r)

    def prediction(self) -> plans.PlanPrediction:
        measured = self.measured_flops_per_sec if self.device.value == THIS_MACHINE else None
        return plans.predict_plan(self.plan(), _device(self.device.value), utilization=self.utilization.value,
                                  flops_per_sec=measured)

    def _update(self, *_) -> None:
        self.output.value = render(self.prediction())

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def panel(**settings) -> Calculator:
    """The what-if calculator (see `Calculator` for the starting settings: shapes, model,
    seq_len, batch, train_tokens, device, cuts, lora_r, utilization, padding_share,
    measured_flops_per_sec)."""
    return Calculator(**settings)
