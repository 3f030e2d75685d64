"""``segment()``: one entry point for every trajectory format, with detection."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sad_jax.data.trajectories import chat, formats, schemas, spec as spec_lib, templates
from sad_jax.data.trajectories.segmented import Segmented, TrajectoryError

#: Every format name ``segment`` accepts: ``auto``, the text layouts, the message schemas.
FORMATS = ("auto",) + formats.TEXT_FORMATS + schemas.SCHEMAS


def detect_format(trajectory: Any) -> str | None:
  """Guesses the format of a trajectory, or None when nothing fits.

  Text: :func:`~sad_jax.data.trajectories.formats.detect_text` (chatml, llama3,
  deepseek, langchain, plain, codeact, react, alfworld, completion, first
  match wins). Anything else: :func:`~sad_jax.data.trajectories.schemas.detect_schema`
  (a list of strings is ``turns``; ``from``/``value`` messages or
  ``{"conversations": ...}`` are ``sharegpt``; SWE-agent steps or
  ``{"history"|"trajectory": [...]}`` are ``swe-agent``; other lists and
  ``{"messages": ...}`` are ``chat``).
  """
  if isinstance(trajectory, str):
    return formats.detect_text(trajectory)
  return schemas.detect_schema(trajectory)


def _resolve_spec(format) -> spec_lib.FormatSpec | None:  # pylint: disable=redefined-builtin
  if isinstance(format, spec_lib.FormatSpec):
    return format
  if isinstance(format, Mapping) or hasattr(format, "to_dict"):
    return spec_lib.load_spec(format)
  return None


def segment(trajectory: Any, *, format: Any = "auto", strict: bool = True,  # pylint: disable=redefined-builtin
            chat_template: str | None = None,
            template_kwargs: dict[str, Any] | None = None) -> Segmented:
  """Renders a trajectory to text and labels every character range with a span type.

  Args:
    trajectory: a string in one of the text layouts, or messages in one of the
      schemas (:data:`FORMATS`; the tables are in
      :mod:`~sad_jax.data.trajectories.formats` and
      :mod:`~sad_jax.data.trajectories.schemas`).
    format: a name from :data:`FORMATS`; ``"auto"`` uses :func:`detect_format`
      and records the choice in ``Segmented.format``; or a user format
      (a :class:`~sad_jax.data.trajectories.spec.FormatSpec`, or a dict /
      ``ConfigDict`` for :func:`~sad_jax.data.trajectories.spec.load_spec`).
    strict: if True, malformed input, and input with no reasoning or action
      span, raises :class:`TrajectoryError`; if False, each format recovers as
      documented, labels what it can and lists what it recovered from in
      ``Segmented.warnings``. Undetectable text is then all ``OTHER`` (format
      ``"unknown"``).
    chat_template: message schemas only: a Jinja2 chat template to render with
      instead of the built-in ChatML layout (offsets stay exact).
    template_kwargs: message schemas only: extra variables for ``chat_template``.

  Returns:
    :class:`Segmented`: ``text``, sorted non-overlapping ``spans`` (unlabelled
    characters are ``OTHER``), ``format``, ``warnings`` and ``coverage``.

  Raises:
    TrajectoryError: malformed input (with ``.position`` and ``.reason``), or any
      input that is neither a string nor messages.
    ValueError: an unknown ``format``, an invalid user spec, or a
      ``chat_template`` used with a text format / with a Jinja syntax error.
  """
  user_spec = _resolve_spec(format)
  if user_spec is None and format not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS} or a format spec, got {format!r}")
  fmt = user_spec.name if user_spec is not None else format
  if fmt == "auto":
    fmt = detect_format(trajectory)
    if fmt is None:
      if not isinstance(trajectory, str) or strict:
        raise TrajectoryError(
            "could not detect the trajectory format (pass format=...) for input of type "
            f"{type(trajectory).__name__}", 0)
      return Segmented(trajectory, (), "unknown",
                       ("could not detect the trajectory format; all text is OTHER",))
  is_schema = user_spec is None and fmt in schemas.SCHEMAS
  if (chat_template is not None or template_kwargs) and not is_schema:
    raise ValueError(f"chat_template/template_kwargs only apply to message formats {schemas.SCHEMAS}, "
                     f"got format={fmt!r}")
  if is_schema:
    if chat_template is not None:
      return templates.render_template(trajectory, chat_template, strict, template_kwargs, schema=fmt)
    return chat.render_builtin(trajectory, strict, schema=fmt)
  if not isinstance(trajectory, str):
    raise TrajectoryError(
        f"format {fmt!r} needs the trajectory as a string, got {type(trajectory).__name__}", 0)
  return spec_lib.segment_text(user_spec or formats.builtin(fmt), trajectory, strict)
