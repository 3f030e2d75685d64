"""Sphinx configuration of the sad_jax documentation (MyST Markdown + autodoc).

Build: ``sphinx-build -W -b html docs docs/_build/html`` (``pip install -e '.[docs]'``).
``tests/test_docs_build.py`` runs exactly that, with warnings as errors.

The API reference (``api.md``) is generated from each family's ``__all__`` when the
page is read, so it always lists the public surface as it is; the guides written
alongside the library (``GUIDES``) are linked from the index when present.
"""
from __future__ import annotations

import importlib
import inspect
import pathlib
import re
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

project = "sad_jax"
author = "The sad_jax authors"
copyright = "2026, The sad_jax authors"  # pylint: disable=redefined-builtin

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
html_theme = "alabaster"
html_static_path: list[str] = []

autodoc_typehints = "none"           # signatures carry them; docstrings give shapes
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
autodoc_inherit_docstrings = False   # a dict constant is not documented by dict's docstring
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
nitpicky = False

# The public families, in data-flow order (see sad_jax/__init__.py).
FAMILIES = [
    ("sad_jax.losses", "Per-token divergences, sparse teachers, regularizers."),
    ("sad_jax.objective", "Span types, weighting, SADState, the config, sad_loss."),
    ("sad_jax.backends", "The vocabulary operations of the objective: dense, fused lm-head."),
    ("sad_jax.training", "The train step, optimizers."),
    ("sad_jax.training.checkpoint", "Orbax checkpoints of the train state."),
    ("sad_jax.parallel", "Meshes, partition rules, shardings, vocab-parallel loss."),
    ("sad_jax.data.trajectories", "Trajectory formats, segmentation, tokenizer alignment, batches."),
    ("sad_jax.data.teacher_cache", "The offline top-k teacher cache."),
    ("sad_jax.data.episodes", "On-policy episodes to span-labelled examples."),
]

# Guides kept next to the code that they describe: (page, title).
GUIDES = [
    ("architecture", "Architecture and the capability table"),
    ("trajectories", "Trajectories: formats, segmentation, tokenizer alignment"),
    ("teacher_cache", "The offline teacher cache"),
    ("checkpoints", "Checkpoints"),
    ("on_policy", "On-policy distillation"),
    ("benchmarks", "Benchmarks"),
    ("agent_example", "The end-to-end agent example"),
    ("lookup_env", "The lookup environment"),
]


def _public_names(module) -> list[str]:
  names = getattr(module, "__all__", None)
  if names is None:
    names = [n for n, v in vars(module).items()
             if not n.startswith("_") and getattr(v, "__module__", "").startswith("sad_jax")]
  return list(names)


def _directive(module, name: str) -> str | None:
  obj = getattr(module, name)
  if inspect.ismodule(obj):
    return None                       # submodules get their own section
  if inspect.isclass(obj):
    return "autoclass"
  if callable(obj):
    return "autofunction"
  return "autodata"


def _describe(value) -> str:
  """One line for a public constant: its type, and its keys or items when short."""
  if isinstance(value, dict):
    return f"``dict`` of {len(value)}: " + ", ".join(f"``{k}``" for k in value)
  if isinstance(value, (tuple, list, frozenset, set)):
    items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
    return f"``{type(value).__name__}``: " + ", ".join(f"``{v!r}``" for v in items)
  return f"``{type(value).__name__}``: ``{value!r}``"


def api_reference() -> str:
  """The API page body: per family a summary table, then each public name."""
  out, seen = [], {}
  for modname, blurb in FAMILIES:
    try:
      module = importlib.import_module(modname)
    except ImportError:
      continue
    entries = [(n, _directive(module, n)) for n in _public_names(module)]
    entries = [(n, d) for n, d in entries if d is not None]
    again = {n: seen[id(getattr(module, n))] for n, d in entries
             if d != "autodata" and id(getattr(module, n)) in seen}
    code = [n for n, d in entries if d != "autodata" and n not in again]
    out += [f"## `{modname}`", "", blurb, "", "```{eval-rst}",
            f".. currentmodule:: {modname}", ""]
    if code:
      out += [".. autosummary::", ""] + [f"   {n}" for n in code] + [""]
    if again:
      out += ["Also exported here: " + ", ".join(
          f":py:obj:`{n} <{first}>`" for n, first in again.items()) + ".", ""]
    for name, directive in entries:
      if name in again:
        continue
      if directive != "autodata":
        seen[id(getattr(module, name))] = f"{modname}.{name}"
      if directive == "autodata":
        out += [f".. py:data:: {name}", "", "   " + _describe(getattr(module, name)), ""]
        continue
      out.append(f".. {directive}:: {name}")
      if directive == "autoclass":
        out.append("   :members:")
      out.append("")
    out += ["```", ""]
  return "\n".join(out)


# Pages in reading order; any other page under docs/ follows them in the toctree.
ORDER = (["quickstart_loss", "quickstart_trajectories", "quickstart_teacher_cache",
          "quickstart_sharded", "quickstart_fused", "quickstart_on_policy",
          "conventions", "divergences"] + [page for page, _ in GUIDES]
         + ["parity", "agent_study", "api", "changelog"])


def guide_links() -> str:
  lines = [f"- [{title}]({page}.md)" for page, title in GUIDES
           if (DOCS / f"{page}.md").exists()]
  return "\n".join(lines) + "\n"


def toctree() -> str:
  present = sorted(p.stem for p in DOCS.glob("*.md") if p.stem != "index")
  pages = [p for p in ORDER if p in present] + [p for p in present if p not in ORDER]
  return "```{toctree}\n:hidden:\n:maxdepth: 1\n\n" + "\n".join(pages) + "\n```\n"


_SEE_ALSO = re.compile(r"^\s+Other args and returns as (.*)$")


def _hoist_see_also(app, what, name, obj, options, lines):
  """Moves the house line "Other args and returns as :func:`f`." out of ``Args:``.

  Inside a Google-style ``Args:`` section the line would be read as one more
  argument; it is a sentence about the whole signature, so it becomes a paragraph.
  """
  del app, what, name, obj, options
  for i, line in enumerate(lines):
    m = _SEE_ALSO.match(line)
    if m:
      del lines[i]
      end = next((j for j in range(i, len(lines)) if not lines[j].strip()), len(lines))
      lines[end:end] = ["", "Other args and returns as " + m.group(1)]
      return


def _source_read(app, docname, source):
  del app
  if docname == "api":
    source[0] = source[0].replace("<!-- api-reference -->", api_reference())
  if docname == "index":
    source[0] = source[0].replace("<!-- guides -->", guide_links())
    source[0] = source[0].replace("<!-- toctree -->", toctree())


def _literal_safe_summaries():
  """autosummary cuts a summary at the first ". ", also inside ``a .. b``; keep it whole."""
  from sphinx.ext import autosummary  # pylint: disable=g-import-not-at-top
  extract = autosummary.extract_summary

  def summary(doc, settings):
    text = extract(doc, settings)
    if text.count("``") % 2:
      first = []
      for line in doc:
        if not line.strip():
          break
        first.append(line.strip())
      text = " ".join(first)
    return text

  autosummary.extract_summary = summary


def setup(app):
  _literal_safe_summaries()
  app.connect("source-read", _source_read)
  app.connect("autodoc-process-docstring", _hoist_see_also, priority=100)
  return {"parallel_read_safe": True}
