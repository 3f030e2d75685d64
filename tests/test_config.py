"""Objective config: defaults, presets, validation errors, loading .py / YAML / JSON."""
from __future__ import annotations

import json
import math
import pathlib

import pytest

from sad_jax.objective import _config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAD_PY = ROOT / "configs" / "sad.py"


def test_default_config_is_the_paper_objective_and_valid():
  c = config_lib.default_config()
  config_lib.validate(c)
  assert c.divergence == "forward_kl"
  assert c.normalization == "span_mean"
  assert c.span_weights.to_dict() == dict(prompt=0.0, reasoning=1.0, action=1.0,
                                          observation=0.0, other=0.0)
  assert c.scale_by_t2 is True and c.weighting == "uniform"
  for key in ("entropy", "confidence_penalty", "span_consistency", "moe_load_balance"):
    assert key in c.regularizers


@pytest.mark.parametrize("preset", ["paper", "production", "research", "fast"])
def test_every_preset_loads_and_validates(preset):
  c = config_lib.load_config(f"{SAD_PY}:{preset}")
  config_lib.validate(c)


def test_presets_differ_and_default_preset_is_paper():
  paper = config_lib.load_config(SAD_PY)
  assert paper.to_dict() == config_lib.default_config().to_dict()
  dicts = [config_lib.load_config(f"{SAD_PY}:{p}").to_dict()
           for p in ("paper", "production", "research", "fast")]
  assert all(dicts[i] != dicts[j] for i in range(4) for j in range(i + 1, 4))
  research = config_lib.load_config(f"{SAD_PY}:research")
  assert research.adaptive_temperature.enabled and research.weighting == "adaptive"


def test_unknown_preset_names_the_allowed_ones():
  with pytest.raises(ValueError, match=r"'nope'.*paper, production, research, fast"):
    config_lib.load_config(f"{SAD_PY}:nope")


def _set(c, path, value):
  *parents, leaf = path.split(".")
  node = c
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


@pytest.mark.parametrize("path,value,match", [
    ("divergence", "kl", r"config\.divergence = 'kl'.*forward_kl"),
    ("normalization", "mean", r"config\.normalization = 'mean'.*'tokens', 'span_mean', "
                              r"'sequence'"),
    ("weighting", "heavy", r"config\.weighting = 'heavy'.*'uniform'.*'difficulty_aware'"),
    ("temperature", 0.0, r"config\.temperature = 0\.0.*\(0, inf\)"),
    ("temperature", "2", r"config\.temperature = '2'.*a number"),
    ("span_weights.action", -1.0, r"config\.span_weights\.action = -1\.0"),
    ("span_weights.action", math.nan, r"config\.span_weights\.action = nan"),
    ("label_smoothing", 1.0, r"config\.label_smoothing = 1\.0.*\[0, 1\)"),
    ("hard_label_weight", -0.5, r"config\.hard_label_weight"),
    ("scale_by_t2", 1, r"config\.scale_by_t2 = 1.*True, False"),
    ("regularizers.confidence_penalty", -1.0, r"config\.regularizers\.confidence_penalty"),
    ("weighting_params.confidence_floor", 0.0, r"confidence_floor = 0\.0.*\(0, 1\]"),
    ("weighting_params.adaptive_eps", 0.0, r"adaptive_eps"),
    ("curriculum.schedule", "exp", r"curriculum\.schedule = 'exp'.*'linear', 'cosine', 'step'"),
    ("curriculum.first", "observation", r"curriculum\.first.*'action', 'reasoning'"),
    ("curriculum.total_steps", 0, r"curriculum\.total_steps = 0.*an integer"),
    ("curriculum.start_factor", 0.0, r"curriculum\.start_factor"),
    ("plateau.history_size", 2.5, r"plateau\.history_size = 2\.5.*an integer"),
    ("ema_decay", 1.0, r"config\.ema_decay = 1\.0"),
    ("adaptive_temperature.rate", 0.0, r"adaptive_temperature\.rate"),
])
def test_validate_names_field_and_allowed_values(path, value, match):
  c = config_lib.default_config()
  _set(c, path, value)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(c)


def test_validate_rejects_inconsistent_temperature_bounds():
  c = config_lib.default_config()
  c.adaptive_temperature.min = 3.0
  c.adaptive_temperature.max = 2.0
  with pytest.raises(ValueError, match=r"adaptive_temperature\.max = 2\.0.*\[3\.0"):
    config_lib.validate(c)
  c = config_lib.default_config()
  c.adaptive_temperature.enabled = True
  c.temperature = 8.0
  with pytest.raises(ValueError, match=r"config\.temperature = 8\.0.*\[1\.0, 4\.0\]"):
    config_lib.validate(c)


def test_validate_rejects_typos_and_unknown_divergence_parameters():
  c = config_lib.default_config()
  c.temprature = 2.0
  with pytest.raises(ValueError, match=r"config\.temprature is not a known field"):
    config_lib.validate(c)
  c = config_lib.default_config()
  c.divergence = "generalized_jsd"
  c.divergence_kwargs.alpha = 0.5
  with pytest.raises(ValueError, match=r"divergence_kwargs\.alpha.*generalized_jsd: beta"):
    config_lib.validate(c)
  c.divergence_kwargs = {"beta": 0.3}
  config_lib.validate(c)


def test_yaml_and_json_are_merged_onto_defaults(tmp_path):
  y = tmp_path / "c.yaml"
  y.write_text("normalization: tokens\nspan_weights:\n  action: 2\n"
               "divergence: skew_kl\ndivergence_kwargs:\n  alpha: 0.2\n"
               "plateau:\n  min_delta: 1e-4\n")
  c = config_lib.load_config(y)
  assert c.normalization == "tokens" and c.span_weights.action == 2.0
  assert c.span_weights.reasoning == 1.0 and c.divergence_kwargs.alpha == 0.2
  assert c.plateau.min_delta == 1e-4
  j = tmp_path / "c.json"
  j.write_text(json.dumps({"weighting": "action_heavy", "weighting_params": {"heavy_factor": 3}}))
  c = config_lib.load_config(str(j))
  assert c.weighting == "action_heavy" and c.weighting_params.heavy_factor == 3.0


def test_load_errors_name_the_field(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"span_weights": {"actions": 1.0}}))
  with pytest.raises(ValueError, match=r"config\.span_weights\.actions is not a known field"):
    config_lib.load_config(bad)
  bad.write_text(json.dumps({"curriculum": {"total_steps": "many"}}))
  with pytest.raises(ValueError, match=r"config\.curriculum\.total_steps = 'many'"):
    config_lib.load_config(bad)
  bad.write_text(json.dumps({"normalization": "per_token"}))
  with pytest.raises(ValueError, match=r"config\.normalization = 'per_token'"):
    config_lib.load_config(bad)
  with pytest.raises(ValueError, match=r"suffix '\.toml'"):
    (tmp_path / "c.toml").write_text("")
    config_lib.load_config(tmp_path / "c.toml")
  with pytest.raises(ValueError, match="does not exist"):
    config_lib.load_config(tmp_path / "missing.yaml")


def test_python_config_file_with_get_config(tmp_path):
  p = tmp_path / "mine.py"
  p.write_text("from sad_jax.objective._config import default_config\n"
               "def get_config(arg=None):\n"
               "  c = default_config()\n"
               "  c.temperature = float(arg or 3)\n"
               "  return c\n")
  assert config_lib.load_config(p).temperature == 3.0
  assert config_lib.load_config(f"{p}:1.5").temperature == 1.5


def test_resolve_merges_mappings_without_touching_inputs():
  overrides = {"normalization": "tokens", "regularizers": {"entropy": -0.1}}
  c = config_lib.resolve(overrides)
  assert c.normalization == "tokens" and c.regularizers.entropy == -0.1
  assert overrides == {"normalization": "tokens", "regularizers": {"entropy": -0.1}}
  base = config_lib.default_config()
  before = base.to_dict()
  assert config_lib.resolve(base) is base
  assert base.to_dict() == before


def test_divergence_weight_zero_refuses_what_needs_a_teacher():
  for overrides, match in [
      ({"weighting": "confidence_based", "hard_label_weight": 1.0}, r"config.weighting = "
       r"'confidence_based' is invalid; allowed: a strategy that needs no teacher"),
      ({"adaptive_temperature": {"enabled": True}, "hard_label_weight": 1.0},
       r"config.adaptive_temperature.enabled = True is invalid"),
      ({}, r"config.divergence_weight = 0.0 is invalid; allowed: > 0, or a hard_label_weight"),
  ]:
    with pytest.raises(ValueError, match=match):
      config_lib.resolve(dict(overrides, divergence_weight=0.0))
  assert config_lib.resolve({"divergence_weight": 0.0, "hard_label_weight": 1.0})


def test_one_merge_for_the_objective_and_the_training_config():
  from sad_jax.training import _step as train
  cfg = train.resolve_config({"float32_params": ["embed"], "objective": {"temperature": 2}})
  assert cfg.float32_params == ("embed",) and cfg.objective.temperature == 2.0
  with pytest.raises(ValueError, match=r"config.objective.temperature = 'hot' is invalid; "
                                       r"allowed: a float"):
    train.resolve_config({"objective": {"temperature": "hot"}})
  with pytest.raises(ValueError, match=r"config.accumulation_steps = 2.5 is invalid; allowed: "
                                       r"a value of type int"):
    train.resolve_config({"accumulation_steps": 2.5})


def test_statistics_are_what_the_config_asks_plus_what_the_objective_reads():
  cfg = config_lib.default_config()
  assert config_lib.statistic_names(cfg) == ("kl_t1",)
  cfg.statistics = "all"
  assert len(config_lib.statistic_names(cfg)) == 5
  cfg.statistics = " total_variation, student_entropy "
  assert config_lib.statistic_names(cfg) == ("student_entropy", "kl_t1", "total_variation")
  cfg.statistics = ""
  cfg.adaptive_temperature.enabled = True
  assert config_lib.statistic_names(cfg) == ("kl_t1", "agreement")
  cfg.adaptive_temperature.enabled = False
  cfg.weighting = "confidence_based"
  assert config_lib.statistic_names(cfg) == ("teacher_entropy", "kl_t1")
  cfg.weighting = "difficulty_aware"
  assert config_lib.statistic_names(cfg) == ("kl_t1", "total_variation")
  cfg.statistics = "kl_t1,entropy"
  with pytest.raises(ValueError, match=r"config.statistics = 'kl_t1,entropy'.*entropy"):
    config_lib.validate(cfg)
