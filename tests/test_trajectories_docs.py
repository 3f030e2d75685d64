"""Every ```python block of docs/trajectories.md runs as written (each on its own)."""
from __future__ import annotations

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "trajectories.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def test_the_page_has_examples():
  assert len(BLOCKS) >= 6


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_doc_block_runs(i, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  exec(compile(BLOCKS[i], f"{DOC.name}[block {i}]", "exec"), {"__name__": f"doc_block_{i}"})  # pylint: disable=exec-used
  capsys.readouterr()
