"""``segment()``: one entry point for every trajectory format, with detection."""
from __future__ import annotations

import re
from typing import Any

from sad_jax.data.trajectories import alfworld, chat, chatml, codeact, react, templates
from sad_jax.data.trajectories.segmented import Segmented, SpanBuilder, TrajectoryError

FORMATS = ("auto", "react", "alfworld", "chat", "chatml", "codeact")
_TEXT_SEGMENTERS = {
    "react": react.segment_react,
    "alfworld": alfworld.segment_alfworld,
    "chatml": chatml.segment_chatml,
    "codeact": codeact.segment_codeact,
}
_CODE = re.compile(r"^[ \t]*(```(?:py|python)?|<code>)[ \t\r]*$|<end_code>", re.MULTILINE)
_CODEACT_MARKER = re.compile(r"^(Thought|Code)[ \t]*:", re.MULTILINE)
_REACT_MARKER = re.compile(r"^(Thought|Action)(?:[ \t]+\d+)?[ \t]*:", re.MULTILINE)
_ALFWORLD_COMMAND = re.compile(r"^>", re.MULTILINE)


def detect_format(trajectory: Any) -> str | None:
  """Guesses the format of a trajectory, or None when nothing fits.

  Rules, first match wins: a list of messages (or a dict with ``"messages"``)
  is ``chat``; text with ``<|im_start|>`` is ``chatml``; text with a
  ``Thought:``/``Code:`` line and a code fence or ``<end_code>`` is ``codeact``;
  text with a line-initial ``Thought[ n]:``/``Action[ n]:`` is ``react``; text
  with a line starting with ``>`` is ``alfworld``.
  """
  if isinstance(trajectory, (list, tuple)) or (
      isinstance(trajectory, dict) and "messages" in trajectory):
    return "chat"
  if not isinstance(trajectory, str):
    return None
  if chatml.IM_START in trajectory:
    return "chatml"
  if _CODEACT_MARKER.search(trajectory) and _CODE.search(trajectory):
    return "codeact"
  if _REACT_MARKER.search(trajectory):
    return "react"
  if _ALFWORLD_COMMAND.search(trajectory):
    return "alfworld"
  return None


def segment(trajectory: Any, *, format: str = "auto", strict: bool = True,  # pylint: disable=redefined-builtin
            chat_template: str | None = None,
            template_kwargs: dict[str, Any] | None = None) -> Segmented:
  """Renders a trajectory to text and labels every character range with a span type.

  Args:
    trajectory: a string (``react``, ``alfworld``, ``chatml``, ``codeact``) or a
      list of OpenAI-style chat messages / ``{"messages": [...], "tools": [...]}``
      (``chat``).
    format: one of :data:`FORMATS`; ``"auto"`` uses :func:`detect_format` and
      records the choice in ``Segmented.format``.
    strict: if True, malformed input raises :class:`TrajectoryError`; if False,
      each format recovers as its module documents and lists what it recovered
      from in ``Segmented.warnings``. Undetectable text is then all ``OTHER``
      (format ``"unknown"``).
    chat_template: ``chat`` only: a Jinja2 chat template to render with instead
      of the built-in ChatML layout (offsets stay exact).
    template_kwargs: ``chat`` only: extra variables for ``chat_template``.

  Returns:
    :class:`Segmented`: ``text``, sorted non-overlapping ``spans`` (unlabelled
    characters are ``OTHER``), ``format`` and ``warnings``.

  Raises:
    TrajectoryError: malformed input (with ``.position`` and ``.reason``), or any
      input that is neither a string nor messages.
    ValueError: an unknown ``format`` or a ``chat_template`` used with another
      format / with a Jinja syntax error.
  """
  if format not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
  fmt = format
  if fmt == "auto":
    fmt = detect_format(trajectory)
    if fmt is None:
      if not isinstance(trajectory, str) or strict:
        raise TrajectoryError(
            "could not detect the trajectory format (pass format=...) for input of type "
            f"{type(trajectory).__name__}", 0)
      return SpanBuilder().build(trajectory, "unknown",
                                 ["could not detect the trajectory format; all text is OTHER"])
  if (chat_template is not None or template_kwargs) and fmt != "chat":
    raise ValueError(f"chat_template/template_kwargs only apply to format='chat', got format={fmt!r}")
  if fmt == "chat":
    if chat_template is not None:
      return templates.render_template(trajectory, chat_template, strict, template_kwargs)
    return chat.render_builtin(trajectory, strict)
  if not isinstance(trajectory, str):
    raise TrajectoryError(
        f"format {fmt!r} needs the trajectory as a string, got {type(trajectory).__name__}", 0)
  return _TEXT_SEGMENTERS[fmt](trajectory, strict)
