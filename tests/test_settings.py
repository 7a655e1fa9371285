"""Typed settings (guidance.settings): refused once, in one line, with the true remedy; parsed once per evaluation;
the sweep folder names derived from the options that change samples; the schemas match conf/."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hydra import compose, initialize_config_dir

from guidance.config import CONF_DIR
from guidance.errors import GuidanceError
from guidance.settings import (SAMPLE_CHANGING, SAMPLE_GROUPS, MetricsSettings, SampleSettings, StudySettings,
                               TrainEvaluatorSettings, TrainingSettings, parse, sweep_dirname_excludes)


@pytest.mark.parametrize("schema,node,line", [
    (SampleSettings, {"batch_size": 2.5}, "batch_size=2.5 must be an integer"),
    (SampleSettings, {"batch_size": True}, "batch_size=True must be an integer"),  # a bool is no count
    (SampleSettings, {"num_samples": 0}, "num_samples=0 must be a positive integer"),
    (SampleSettings, {"use_ema": "yes"}, "use_ema='yes' must be true or false"),
    (SampleSettings, {"weak_ckpt": 3}, "weak_ckpt=3 must be a string (or null)"),
    (SampleSettings, {"num_sample": 8}, "unknown option(s) num_sample: known are unet_ckpt,"),
    (MetricsSettings, {"cmmd_sigma": float("nan")}, "cmmd_sigma=nan must be a finite number"),
    (TrainEvaluatorSettings, {"lr": -1e-3}, "lr=-0.001 must be > 0"),
    (TrainingSettings, {"ema_rate": 1.0}, "ema_rate=1.0 must be in [0, 1)"),
    (StudySettings, {"num_samples": 0, "sweep": [{"guidance": "cfg"}]}, "num_samples=0 must be a positive integer"),
])
def test_a_wrong_type_value_or_name_is_one_line(schema, node, line):
    with pytest.raises(GuidanceError) as e:
        parse(schema, node)
    assert str(e.value).startswith(line) and "\n" not in str(e.value)


def test_parse_fills_defaults_and_returns_a_parsed_instance_unchanged():
    s = parse(SampleSettings, {"seed": 3})
    assert s.seed == 3 and s.batch_size == SampleSettings.batch_size and parse(SampleSettings, s) is s


def test_metrics_are_parsed_once_per_evaluation(monkeypatch):
    """metrics_config ran four times per evaluation (issue 18); a parsed config is passed on as it is."""
    import guidance.metrics.evaluate as ev

    calls = []
    real = ev.parse
    monkeypatch.setattr(ev, "parse", lambda *a, **k: calls.append(1) or real(*a, **k))
    parsed = ev.metrics_config({"k_prc": 4})
    assert ev.metrics_config(parsed) is parsed and ev.metrics_config(ev.metrics_config(parsed)) is parsed
    assert len(calls) == 1 and parsed["k_prc"] == 4 and parsed["k_dc"] == MetricsSettings.k_dc


def _yaml(path: str) -> dict:
    return {k: v for k, v in yaml.safe_load(open(f"{CONF_DIR}/{path}")).items() if k not in ("defaults", "hydra")}


def test_the_schemas_hold_the_options_and_defaults_of_conf():
    """A new option in a yaml without its typed field (or a default that drifts) fails here."""
    fields = lambda schema: {f.name: f.default for f in dataclasses.fields(schema)}
    metrics = _yaml("metrics/evaluator.yaml")
    assert metrics.pop("evaluator_checkpoint").endswith("evaluator.pt")  # (an interpolation of data.name)
    assert metrics == {k: v for k, v in fields(MetricsSettings).items() if k != "evaluator_checkpoint"}
    assert _yaml("training/default.yaml") == fields(TrainingSettings)
    sample = _yaml("sample.yaml")
    assert set(sample) == set(fields(SampleSettings))
    evaluator = _yaml("train_evaluator.yaml")
    assert set(evaluator) - {"evaluator"} == set(fields(TrainEvaluatorSettings))
    for study in ("cpu", "gpu", "debug"):
        assert set(_yaml(f"study/{study}.yaml")["study"]) <= set(fields(StudySettings)), study


def test_sweep_folder_names_leave_out_exactly_what_does_not_change_samples():
    excluded = set(sweep_dirname_excludes())
    own = {f.name for f in dataclasses.fields(SampleSettings)}
    assert not excluded & set(SAMPLE_CHANGING)
    assert own - set(SAMPLE_CHANGING) <= excluded
    assert {f"metrics.{f.name}" for f in dataclasses.fields(MetricsSettings)} <= excluded
    assert {"batch_size", "device", "unet_ckpt", "logger", "data"} <= excluded  # the hand list's, still there
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sample", return_hydra_config=True)
    assert list(cfg.hydra.job.config.override_dirname.exclude_keys) == sweep_dirname_excludes()
    assert set(SAMPLE_GROUPS) >= {"guidance", "sampler", "data", "metrics", "logger"}
