"""Configuration of the SAD objective: defaults, validation, loading.

The objective is configured by one :class:`ml_collections.ConfigDict`. Nothing in
the library mutates it: everything that changes during training lives in
:class:`sad_jax.objective._state.SADState`.

Usage::

  from sad_jax.objective import _config as sad_config
  cfg = sad_config.default_config()          # the SAD paper's objective
  cfg.normalization = "tokens"
  sad_config.validate(cfg)                   # ValueError naming field + allowed values
  cfg = sad_config.load_config("configs/sad.py:production")   # or .yaml / .json

Fields (see :func:`default_config` for the defaults):

* ``divergence`` / ``divergence_kwargs``: a name from
  :mod:`sad_jax.losses._divergences` and its parameters (e.g. ``beta`` for
  ``generalized_jsd``); ``divergence_weight`` its coefficient (0: no teacher term,
  e.g. supervised fine-tuning with ``hard_label_weight = 1``).
* ``temperature``: initial distillation temperature (the running value is
  ``SADState.temperature``); ``scale_by_t2`` multiplies the divergence by
  :math:`T^2` once (Hinton et al., 2015).
* ``span_weights``: :math:`\\lambda` per span type (``prompt, reasoning, action,
  observation, other``); padding always has weight 0.
* ``weighting`` / ``weighting_params``: one of
  :data:`sad_jax.objective._weighting.STRATEGIES` and the parameters of the strategies.
* ``normalization``: ``tokens | span_mean | sequence``.
* ``hard_label_weight`` / ``label_smoothing``: optional cross-entropy on labels.
* ``regularizers``: coefficients of ``entropy``, ``confidence_penalty`` (with
  ``confidence_threshold``), ``span_consistency`` and ``moe_load_balance``.
* ``adaptive_temperature``, ``curriculum``, ``plateau``, ``ema_decay``: the
  rules that update :class:`~sad_jax.objective._state.SADState`.
* ``statistics``: the per-token teacher statistics at :math:`T = 1` computed each step
  and reported in the metrics, ``"all"`` or comma-separated names of
  ``teacher_entropy, student_entropy, kl_t1, agreement, total_variation``; the ones
  the objective reads are always added (:func:`statistic_names`). Each one beyond
  ``kl_t1`` costs a reduction over the vocabulary in the kernel's pass.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections

from sad_jax.objective import _spans as spans

NORMALIZATIONS = ("tokens", "span_mean", "sequence")
CURRICULUM_SCHEDULES = ("linear", "cosine", "step")
CURRICULUM_FIRST = ("action", "reasoning")
SPAN_WEIGHT_KEYS = tuple(n for n in spans.SPAN_NAMES if n != "pad")
# Strategy names live here (not in weighting.py) so that validating a config does
# not import jax-heavy modules; weighting.py checks it implements exactly these.
WEIGHTING_STRATEGIES = ("uniform", "reasoning_heavy", "action_heavy", "adaptive",
                        "curriculum", "confidence_based", "difficulty_aware")
# Free-form sub-dicts whose keys are not checked against the defaults.
_FREE_FORM = ("divergence_kwargs",)


def default_config() -> ml_collections.ConfigDict:
  """Returns the default configuration: the SAD paper's objective.

  Forward KL (teacher ‖ student) on the teacher's trajectories, ``span_mean``
  normalization :math:`\\lambda_r L_{CoT} + \\lambda_a L_{Act}` with
  :math:`\\lambda_r = \\lambda_a = 1`, prompt and observation tokens masked,
  temperature 1, no extra terms, no adaptive rules.
  """
  c = ml_collections.ConfigDict()
  c.divergence = "forward_kl"
  c.divergence_kwargs = ml_collections.ConfigDict()
  c.divergence_weight = 1.0
  c.temperature = 1.0
  c.scale_by_t2 = True
  c.span_weights = ml_collections.ConfigDict(dict(
      prompt=0.0, reasoning=1.0, action=1.0, observation=0.0, other=0.0))
  c.weighting = "uniform"
  c.weighting_params = ml_collections.ConfigDict(dict(
      heavy_factor=2.0,        # reasoning_heavy / action_heavy multiplier
      adaptive_power=1.0,      # adaptive: exponent on the running span losses
      adaptive_eps=1e-6,       # adaptive: added to the running losses (no 0/0)
      confidence_floor=0.1,    # confidence_based: factor of a uniform teacher
      difficulty_scale=1.0,    # difficulty_aware: factor = 1 + scale * TV
  ))
  c.normalization = "span_mean"
  c.hard_label_weight = 0.0
  c.label_smoothing = 0.0
  c.regularizers = ml_collections.ConfigDict(dict(
      entropy=0.0,
      confidence_penalty=0.0,
      confidence_threshold=math.inf,
      span_consistency=0.0,
      moe_load_balance=0.0,
  ))
  c.ema_decay = 0.99
  c.adaptive_temperature = ml_collections.ConfigDict(dict(
      enabled=False, min=1.0, max=4.0, rate=0.05))
  c.curriculum = ml_collections.ConfigDict(dict(
      total_steps=10_000, schedule="linear", first="action", start_factor=0.1))
  c.plateau = ml_collections.ConfigDict(dict(
      history_size=50, patience=200, min_delta=1e-3))
  c.statistics = "kl_t1"  # the forward KL's own value at T = 1: no extra pass
  return c


def statistic_names(config) -> tuple[str, ...]:
  """The teacher statistics the objective computes for ``config``, in the order of
  :data:`sad_jax.losses._divergences.STATISTICS`.

  ``config.statistics`` (``"all"`` or comma-separated names) plus those the objective
  reads: ``kl_t1`` (the state's plateau and loss history), ``agreement`` under
  ``adaptive_temperature``, ``teacher_entropy`` for ``confidence_based`` and
  ``total_variation`` for ``difficulty_aware``.

  Raises:
    ValueError: naming ``config.statistics`` and the allowed names.
  """
  from sad_jax.losses import _divergences as divergences  # pylint: disable=g-import-not-at-top
  value = config["statistics"]
  if not isinstance(value, str):
    _fail("statistics", value, "'all' or a comma-separated string of "
          + ", ".join(divergences.STATISTICS))
  try:
    names = set(divergences.statistic_names(value)) | {"kl_t1"}
  except ValueError as e:
    raise ValueError(f"config.statistics = {value!r} is invalid: {e}") from None
  if config["adaptive_temperature"]["enabled"]:
    names.add("agreement")
  names |= {"confidence_based": {"teacher_entropy"},
            "difficulty_aware": {"total_variation"}}.get(config["weighting"], set())
  return divergences.statistic_names(names)


def _fail(field: str, value: Any, allowed: str) -> None:
  raise ValueError(f"config.{field} = {value!r} is invalid; allowed: {allowed}")


def _number(cfg, field: str, *, lo=None, hi=None, lo_open=False, hi_open=False,
            integer=False) -> None:
  value = _get(cfg, field)
  kind = "an integer" if integer else "a number"
  ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok_type:
    _fail(field, value, kind)
  if math.isnan(value) or (lo is not None and (value <= lo if lo_open else value < lo)) or (
      hi is not None and (value >= hi if hi_open else value > hi)):
    left = "(" if lo_open else "["
    right = ")" if hi_open or hi is None else "]"
    _fail(field, value, f"{kind} in {left}{'-inf' if lo is None else lo}, "
          f"{'inf' if hi is None else hi}{right}")


def _choice(cfg, field: str, allowed) -> None:
  value = _get(cfg, field)
  if value not in allowed:
    _fail(field, value, ", ".join(repr(a) for a in allowed))


def _is_mapping(value) -> bool:
  return isinstance(value, (Mapping, ml_collections.ConfigDict, ml_collections.FrozenConfigDict))


def _get(cfg, field: str):
  value = cfg
  for part in field.split("."):
    value = value[part]
  return value


def _check_keys(cfg, reference, prefix: str = "") -> None:
  """Every key of ``cfg`` exists in ``reference`` (catches typos) and vice versa."""
  for key in cfg.keys():
    path = f"{prefix}{key}"
    if key not in reference:
      raise ValueError(f"config.{path} is not a known field; allowed fields here: "
                       f"{', '.join(sorted(reference.keys()))}")
    if key in _FREE_FORM:
      if not _is_mapping(cfg[key]):
        _fail(path, cfg[key], "a mapping of keyword arguments")
      continue
    if _is_mapping(reference[key]):
      if not _is_mapping(cfg[key]):
        _fail(path, cfg[key], f"a mapping with fields {', '.join(reference[key].keys())}")
      _check_keys(cfg[key], reference[key], f"{path}.")
  for key in reference.keys():
    if key not in cfg:
      raise ValueError(f"config.{prefix}{key} is missing (start from default_config())")


def validate(config) -> None:
  """Checks every field of an objective config.

  Args:
    config: a ``ConfigDict``/``FrozenConfigDict`` (or mapping) shaped like
      :func:`default_config`.

  Raises:
    ValueError: naming the first offending field, its value and the allowed values.
  """
  _check_keys(config, default_config())
  from sad_jax.losses import _divergences as divergences  # pylint: disable=g-import-not-at-top
  name = config["divergence"]
  try:
    fn = divergences.get_divergence(name)
  except ValueError as e:
    raise ValueError(f"config.divergence = {name!r} is invalid: {e}") from None
  params = inspect.signature(fn).parameters
  accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
  allowed = [p.name for p in params.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY
             and p.name not in ("temperature", "where")]
  for key in config["divergence_kwargs"].keys():
    if not accepts_any and key not in allowed:
      _fail(f"divergence_kwargs.{key}", config["divergence_kwargs"][key],
            f"parameters of {name}: {', '.join(allowed) or '(none)'}")
  _number(config, "divergence_weight", lo=0, hi=math.inf, hi_open=True)
  _number(config, "temperature", lo=0, lo_open=True, hi=math.inf, hi_open=True)
  if not isinstance(config["scale_by_t2"], bool):
    _fail("scale_by_t2", config["scale_by_t2"], "True, False")
  for key in SPAN_WEIGHT_KEYS:
    _number(config, f"span_weights.{key}", lo=0, hi=math.inf, hi_open=True)
  _choice(config, "weighting", WEIGHTING_STRATEGIES)
  _number(config, "weighting_params.heavy_factor", lo=0, lo_open=True, hi=math.inf, hi_open=True)
  _number(config, "weighting_params.adaptive_power", lo=0, hi=math.inf, hi_open=True)
  _number(config, "weighting_params.adaptive_eps", lo=0, lo_open=True, hi=math.inf, hi_open=True)
  _number(config, "weighting_params.confidence_floor", lo=0, lo_open=True, hi=1)
  _number(config, "weighting_params.difficulty_scale", lo=0, hi=math.inf, hi_open=True)
  _choice(config, "normalization", NORMALIZATIONS)
  _number(config, "hard_label_weight", lo=0, hi=math.inf, hi_open=True)
  _number(config, "label_smoothing", lo=0, hi=1, hi_open=True)
  _number(config, "regularizers.entropy", lo=-math.inf, hi=math.inf, lo_open=True, hi_open=True)
  _number(config, "regularizers.confidence_penalty", lo=0, hi=math.inf, hi_open=True)
  _number(config, "regularizers.confidence_threshold", lo=0)
  _number(config, "regularizers.span_consistency", lo=0, hi=math.inf, hi_open=True)
  _number(config, "regularizers.moe_load_balance", lo=0, hi=math.inf, hi_open=True)
  _number(config, "ema_decay", lo=0, hi=1, hi_open=True)
  at = config["adaptive_temperature"]
  if not isinstance(at["enabled"], bool):
    _fail("adaptive_temperature.enabled", at["enabled"], "True, False")
  _number(config, "adaptive_temperature.min", lo=0, lo_open=True, hi=math.inf, hi_open=True)
  _number(config, "adaptive_temperature.max", lo=at["min"], hi=math.inf, hi_open=True)
  _number(config, "adaptive_temperature.rate", lo=0, lo_open=True, hi=1)
  if at["enabled"]:
    _number(config, "temperature", lo=at["min"], hi=at["max"])
  _number(config, "curriculum.total_steps", lo=1, integer=True)
  _choice(config, "curriculum.schedule", CURRICULUM_SCHEDULES)
  _choice(config, "curriculum.first", CURRICULUM_FIRST)
  _number(config, "curriculum.start_factor", lo=0, lo_open=True, hi=1)
  _number(config, "plateau.history_size", lo=1, integer=True)
  _number(config, "plateau.patience", lo=1, integer=True)
  _number(config, "plateau.min_delta", lo=0, hi=1, hi_open=True)
  statistic_names(config)
  if config["divergence_weight"] == 0:
    reg = config["regularizers"]
    if config["weighting"] in ("confidence_based", "difficulty_aware"):
      _fail("weighting", config["weighting"], "a strategy that needs no teacher when "
            "divergence_weight = 0 (confidence_based and difficulty_aware read the teacher)")
    if at["enabled"]:
      _fail("adaptive_temperature.enabled", True, "False when divergence_weight = 0 (the "
            "rule follows teacher-student agreement)")
    if config["hard_label_weight"] == 0 and not any(
        reg[k] != 0 for k in ("entropy", "confidence_penalty", "span_consistency")):
      _fail("divergence_weight", 0.0, "> 0, or a hard_label_weight / regularizer > 0 "
            "(with all of them 0 there is nothing to train)")


def resolve(config) -> ml_collections.ConfigDict:
  """Returns a validated config from a ConfigDict, or from a (partial) mapping of overrides.

  A plain ``dict`` is merged onto :func:`default_config` (so ``{"normalization":
  "tokens"}`` is enough); a ``ConfigDict`` must be complete. Either way it is
  validated and never modified.
  """
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    validate(config)
    return config
  if _is_mapping(config):
    merged = default_config()
    merge(merged, config)
    validate(merged)
    return merged
  raise TypeError(f"config must be a ConfigDict or a mapping, got {type(config).__name__}")


def merge(base: ml_collections.ConfigDict, overrides: Mapping, prefix: str = "") -> None:
  """Merges a (nested) mapping of ``overrides`` into ``base`` in place, type-checked.

  The one merge of every config schema (the objective's and the training config,
  which nests it): unknown keys are refused naming the allowed ones, sub-configs take
  mappings, a leaf takes a value of its default's type (ints and numeric strings for
  floats, as YAML 1.1 writes ``1e-3``; a list for a tuple).

  Raises:
    ValueError: naming ``prefix + key``, the value and what is allowed.
  """
  for key, value in overrides.items():
    path = f"{prefix}{key}"
    if key not in base:
      raise ValueError(f"config.{path} is not a known field; allowed fields here: "
                       f"{', '.join(sorted(base.keys()))}")
    if key in _FREE_FORM:
      if not _is_mapping(value):
        _fail(path, value, "a mapping of keyword arguments")
      base[key] = ml_collections.ConfigDict(dict(value))
    elif isinstance(base[key], ml_collections.ConfigDict):
      if not _is_mapping(value):
        _fail(path, value, f"a mapping with fields {', '.join(base[key].keys())}")
      merge(base[key], value, f"{path}.")
    else:
      expected = type(base[key])
      if expected is tuple and isinstance(value, list):
        value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
      if expected is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
          value = float(value)  # ints, and YAML 1.1 which reads "1e-3" as a string
        except ValueError:
          _fail(path, value, "a float")
      if type(value) is not expected and not (expected is float and isinstance(value, float)):
        _fail(path, value, f"a value of type {expected.__name__}")
      base[key] = value


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Loads and validates a config file.

  Args:
    path: one of

      * ``file.py`` or ``file.py:ARG`` -- a module with ``get_config(arg)``
        (big_vision / ``config_flags`` style); ``ARG`` is passed as a string,
        without it ``get_config()`` is called with no argument;
      * ``file.yaml`` / ``file.yml`` / ``file.json`` -- a (partial) mapping
        merged onto :func:`default_config`.

  Returns:
    The validated ``ConfigDict``.
  """
  text = os.fspath(path)
  arg = None
  if ".py:" in text:
    text, arg = text.rsplit(":", 1)
  p = pathlib.Path(text)
  if not p.is_file():
    raise ValueError(f"config path {text!r} does not exist")
  suffix = p.suffix.lower()
  if suffix == ".py":
    spec = importlib.util.spec_from_file_location(f"_sad_config_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ValueError(f"config file {text!r} defines no get_config()")
    cfg = module.get_config() if arg is None else module.get_config(arg)
    return resolve(cfg)
  if suffix in (".yaml", ".yml"):
    import yaml  # pylint: disable=g-import-not-at-top
    data = yaml.safe_load(p.read_text())
  elif suffix == ".json":
    data = json.loads(p.read_text())
  else:
    raise ValueError(f"config path {text!r} has suffix {suffix!r}; allowed: .py, .yaml, "
                     ".yml, .json")
  if not isinstance(data, Mapping):
    raise ValueError(f"config file {text!r} must hold a mapping, got {type(data).__name__}")
  return resolve(dict(data))
