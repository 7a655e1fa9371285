"""Presets: a strategy at a named schedule setting, recorded (sample_info "strategy") and tabled under its own
name. They are yaml files (conf/guidance/<preset>.yaml: `_target_` the strategy, `preset: <name>`), not classes:
the math is the strategy's, the schedule is the shared one (guidance.guiders.schedules).

    cfg_interval         cfg with the interval schedule (Kynkäänniemi et al. 2024): w for sigma_lo < σ_i <= sigma_hi
    cfg_schedule         cfg with any weight schedule (Wang et al. 2024)
    classifier_schedule  classifier guidance with any weight schedule, by default an interval of noise levels

A preset keeps the sample_info fields and the table of the class it replaces, so points sampled before are
described (and tabled) as they were: cfg_interval records sigma_lo / sigma_hi at the top level, the schedule
presets the whole schedule under "schedule".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from guidance.errors import GuidanceError
from guidance.guiders.base import Description, TableSpec, fmt, model_of

CFG_INTERVAL_TABLE = TableSpec("cfg_interval", "CFG in a limited interval (Kynkäänniemi et al. 2024)",
                               ("w", "Interval σ"), order=30, baseline_models=("conditional",),
                               baseline_cells=("0", "–"))
CFG_SCHEDULE_TABLE = TableSpec("cfg_schedule", "CFG weight schedules (Wang et al. 2024)", ("w", "Schedule"),
                               order=25, baseline_models=("conditional",), baseline_cells=("0", "–"))
CLASSIFIER_SCHEDULE_TABLE = TableSpec("classifier_schedule", "Classifier guidance on a schedule / in an interval",
                                      ("Model", "s", "Schedule"), order=15, classifier_cost=True,
                                      baseline_models=("unconditional", "conditional"),
                                      baseline_cells=("{model}", "0", "–"))


def _num(v) -> float:
    return v if v is not None else float("inf")


def describe_cfg_interval(info: dict) -> Description:
    w, lo, hi = info.get("scale"), info.get("sigma_lo"), info.get("sigma_hi")
    interval = f"({fmt(lo)}, {fmt(hi)}]"
    return Description(CFG_INTERVAL_TABLE, (fmt(w), interval), (_num(w), hi or 0.0),
                       series=f"cfg_interval σ in {interval}", x=w, x_symbol="w", unguided=w == 0)


def describe_cfg_schedule(info: dict) -> Description:
    w, label = info.get("scale"), (info.get("schedule") or {}).get("label", "?")
    return Description(CFG_SCHEDULE_TABLE, (fmt(w), label), (_num(w),), series=f"cfg {label}", x=w,
                       x_symbol="w", unguided=w == 0)


def describe_classifier_schedule(info: dict) -> Description:
    s, model, label = info.get("scale"), model_of(info), (info.get("schedule") or {}).get("label", "?")
    return Description(CLASSIFIER_SCHEDULE_TABLE, (model, fmt(s), label), (_num(s),),
                       series=f"classifier {label} ({model})", x=s, x_symbol="s", unguided=s == 0)


@dataclass(frozen=True)
class Preset:
    name: str
    strategy: str                                # the GUIDERS name it is a setting of
    describe: Callable[[dict], Description]
    shape: str | None = None                     # the schedule shape it fixes (None: the yaml's, any)
    flat: tuple[str, ...] = ()                   # schedule fields recorded at the top level of sample_info
    defaults: tuple = ()                         # (field, value) pairs, as the preset's yaml

    def schedule_fields(self, fields: dict) -> dict:
        fields = {**dict(self.defaults), **fields}
        if self.shape is None:
            return fields
        if fields.get("schedule", self.shape) != self.shape:
            raise GuidanceError(f"guidance={self.name} is {self.strategy} with the {self.shape} schedule; for "
                                f"schedule={fields['schedule']} use guidance={self.strategy} guidance.schedule=...")
        return {**fields, "schedule": self.shape}

    def record(self, schedule) -> dict:
        if self.flat:
            return {k: getattr(schedule, k) for k in self.flat}
        return {"schedule": schedule.record()}


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cfg_interval", "cfg", describe_cfg_interval, shape="interval", flat=("sigma_lo", "sigma_hi"),
           defaults=(("sigma_hi", 6.2),)),
    Preset("cfg_schedule", "cfg", describe_cfg_schedule, defaults=(("schedule", "linear"),)),
    Preset("classifier_schedule", "classifier", describe_classifier_schedule,
           defaults=(("schedule", "interval"), ("sigma_hi", 6.2))),
)}


def preset_of(name: str, strategy: str) -> Preset:
    if name not in PRESETS or PRESETS[name].strategy != strategy:
        ours = sorted(n for n, p in PRESETS.items() if p.strategy == strategy)
        raise GuidanceError(f"guidance.preset={name!r} is not a preset of {strategy}; its presets: {ours or 'none'}")
    return PRESETS[name]
