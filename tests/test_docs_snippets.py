"""Every Python code block of README.md and docs/*.md runs, and every docstring example.

A page's ```python blocks run in order in one fresh interpreter (later blocks see the
names of earlier ones, as in a notebook), from the repository root. Blocks fenced as
anything else (bash, console, text, ...) are shell commands or output and are not run.
Docstring examples (``>>>``) of every sad_jax module run with :mod:`doctest`.
"""
from __future__ import annotations

import doctest
import importlib
import json
import os
import pathlib
import pkgutil
import re
import subprocess
import sys
import textwrap

import pytest

import sad_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\n]*)$")
PYTHON = {"python", "py", "{code-block} python", "{code-cell} python", "{code-block} py"}


def python_blocks(text: str) -> list[tuple[int, str]]:
  """``(first line number, code)`` of each fenced Python block of a Markdown text."""
  blocks, lines, i = [], text.splitlines(), 0
  while i < len(lines):
    m = FENCE.match(lines[i])
    if not m:
      i += 1
      continue
    fence, info, start = m["fence"], m["info"].strip(), i + 1
    i += 1
    body = []
    while i < len(lines) and not (lines[i].strip().startswith(fence)
                                  and lines[i].strip().strip(fence[0]) == ""):
      body.append(lines[i])
      i += 1
    i += 1
    if info.lower() in PYTHON:
      code = [l for l in body if not l.lstrip().startswith(":")]   # MyST directive options
      blocks.append((start + 1, textwrap.dedent("\n".join(code))))
  return blocks


def test_python_blocks_are_found():
  text = "x\n```python\na = 1\n```\n```bash\nls\n```\n  ```py\n  b = 2\n  ```\n~~~text\nno\n~~~\n"
  assert python_blocks(text) == [(3, "a = 1"), (9, "b = 2")]


_DRIVER = """
import json, sys
blocks = json.loads(sys.stdin.read())
namespace = {"__name__": "__main__"}
for where, code in blocks:
  exec(compile(code, where, "exec"), namespace)
"""


# The README and the short reference pages run by default; the pages that train models
# (quickstarts, guides) take tens of seconds each and run with the slow tests.
FAST_PAGES = {"README.md", "conventions.md", "divergences.md", "parity.md", "index.md"}


def _page_param(page):
  marks = () if page.name in FAST_PAGES else (pytest.mark.slow,)
  return pytest.param(page, id=page.relative_to(ROOT).as_posix(), marks=marks)


@pytest.mark.parametrize("page", [_page_param(p) for p in PAGES])
def test_page_snippets_run(page, tmp_path):
  blocks = python_blocks(page.read_text(encoding="utf-8"))
  if not blocks:
    pytest.skip(f"{page.name} has no Python block")
  rel = page.relative_to(ROOT).as_posix()
  payload = json.dumps([(f"{rel}:{line}", code) for line, code in blocks])
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             TMPDIR=str(tmp_path), MPLBACKEND="Agg")
  proc = subprocess.run([sys.executable, "-c", _DRIVER], input=payload, text=True,
                        capture_output=True, cwd=ROOT, env=env, timeout=600)
  assert proc.returncode == 0, (
      f"a Python block of {rel} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


def _docstring_tests() -> dict[str, list[doctest.DocTest]]:
  """The docstring examples of every sad_jax module, by module (those that have any)."""
  found = {}
  names = ["sad_jax"] + sorted(info.name for info in pkgutil.walk_packages(
      sad_jax.__path__, "sad_jax.") if not info.name.endswith("__main__"))
  finder = doctest.DocTestFinder(exclude_empty=True)
  for name in names:
    tests = [t for t in finder.find(importlib.import_module(name), name) if t.examples]
    if tests:
      found[name] = tests
  return found


DOCTESTS = _docstring_tests()


def test_some_docstrings_have_examples():
  assert "sad_jax.losses._divergences" in DOCTESTS


@pytest.mark.parametrize("modname", sorted(DOCTESTS))
def test_docstring_examples(modname):
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  for test in DOCTESTS[modname]:
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {modname} failed"
