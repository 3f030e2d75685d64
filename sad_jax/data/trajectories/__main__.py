"""Command line: look at trajectories the way the loss will see them.

  python -m sad_jax.data.trajectories inspect FILE.jsonl [--format F | --spec SPEC.yaml] [--tokenizer tokenizer.json]
  python -m sad_jax.data.trajectories stats FILE.jsonl [--format F | --spec SPEC.yaml] [--tokenizer tokenizer.json]

``inspect`` prints each trajectory with its format, its coverage (characters
per span type), why it is flagged if it is, and its spans coloured by type (and,
with a tokenizer, one line per run of same-type tokens); ``stats`` prints a
table of span fractions, lengths and complexity per format. Both end with the
read report: ok, recovered, flagged (with reasons) and malformed lines.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import os
import sys

import numpy as np

from sad_jax.objective._spans import NUM_SPAN_TYPES, SpanType
from sad_jax.data.trajectories import display
from sad_jax.data.trajectories.align import tokenize
from sad_jax.data.trajectories.io import ReadReport, read_jsonl
from sad_jax.data.trajectories.segment import FORMATS
from sad_jax.data.trajectories.spec import load_spec
from sad_jax.data.trajectories.stats import complexity_from_counts, span_char_counts, span_token_counts


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m sad_jax.data.trajectories", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for name, help_ in (("inspect", "print trajectories with their spans coloured by type"),
                      ("stats", "print span fractions, lengths and malformed lines")):
    p = sub.add_parser(name, help=help_)
    p.add_argument("file", help="JSONL (or .jsonl.gz) of trajectories, one per line")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="override each record's format (default: the record's, else auto)")
    p.add_argument("--spec", help="a YAML format spec (see sad_jax.data.trajectories.spec) for every record")
    p.add_argument("--tokenizer", help="a Hugging Face tokenizer.json: count and show tokens")
    p.add_argument("--chat-template", help="file with a Jinja2 chat template for chat records")
    p.add_argument("--non-strict", action="store_true",
                   help="recover from malformed trajectories and show the flagged ones")
    p.add_argument("--max-other", type=float, default=0.9,
                   help="flag records with more than this fraction of OTHER characters")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    if name == "inspect":
      p.add_argument("--limit", type=int, default=10, help="at most this many trajectories (0: all)")
  return parser


def _load_tokenizer(path: str | None):
  if path is None:
    return None
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  return Tokenizer.from_file(path)


def _records(args, report: ReadReport):
  kwargs = {}
  if args.chat_template:
    with open(args.chat_template) as f:
      kwargs["chat_template"] = f.read()
  fmt = load_spec(args.spec) if args.spec else args.format
  return read_jsonl(args.file, format=fmt, strict=not args.non_strict, report=report,
                    max_other=args.max_other, **kwargs)


def _inspect(args, out, color: bool) -> None:
  tokenizer = _load_tokenizer(args.tokenizer)
  report = ReadReport()
  records = _records(args, report)
  if args.limit > 0:
    records = itertools.islice(records, args.limit)
  print(display.legend(color), file=out)
  for rec in records:
    seg = rec.segmented
    summary = "  ".join(f"{name}={n}" for name, n in seg.coverage.items() if n)
    print(f"\n── {rec.id} (line {rec.line})  format={seg.format}  chars: {summary}", file=out)
    for warning in seg.warnings:
      print(f"   warning: {warning}", file=out)
    for issue in seg.issues(args.max_other):
      print(f"   flagged: {issue}", file=out)
    print(display.render_spans(seg, color), file=out)
    if tokenizer is not None:
      tok = tokenize(seg, tokenizer)
      print(f"── {len(tok.ids)} tokens", file=out)
      print(display.render_tokens(seg.text, tok.offsets, tok.span_ids, color), file=out)
  print(f"\n{report}", file=out)


def _stats(args, out) -> None:
  tokenizer = _load_tokenizer(args.tokenizer)
  report = ReadReport()
  per_format = collections.defaultdict(list)
  for rec in _records(args, report):
    if tokenizer is None:
      counts = span_char_counts(rec.segmented)
    else:
      counts = span_token_counts(tokenize(rec.segmented, tokenizer).span_ids)
    per_format[rec.segmented.format].append(counts)
  unit = "tokens" if tokenizer is not None else "chars"
  names = [t.name.lower() for t in SpanType if t != SpanType.PAD]
  header = f"{'format':<10} {'trajs':>6} {unit:>9} {'mean len':>9} " + " ".join(
      f"{n:>11}" for n in names) + f" {'mean C(τ)':>10}"
  print(header, file=out)
  print("─" * len(header), file=out)
  rows = sorted(per_format.items())
  if len(rows) != 1:
    rows.append(("total", [c for _, cs in rows for c in cs]))
  for fmt, cs in rows:
    counts = np.stack(cs) if cs else np.zeros((1, NUM_SPAN_TYPES), np.int64)
    total = counts.sum()
    fractions = counts.sum(0) / max(total, 1)
    score = complexity_from_counts(counts).mean() if cs else 0.0
    print(f"{fmt:<10} {len(cs):>6} {total:>9} {total / max(len(cs), 1):>9.1f} " + " ".join(
        f"{fractions[t]:>10.1%} " for t in SpanType if t != SpanType.PAD) + f"{score:>10.1f}",
          file=out)
  print(f"\nC(τ) = #reasoning + #action ({unit}; no teacher entropy)", file=out)
  print(report, file=out)


def main(argv=None, out=None) -> int:
  """Runs the command line; returns the exit status."""
  args = _parser().parse_args(argv)
  out = sys.stdout if out is None else out
  color = args.color == "always" or (
      args.color == "auto" and out.isatty() and "NO_COLOR" not in os.environ)
  try:
    if args.command == "inspect":
      _inspect(args, out, color)
    else:
      _stats(args, out)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
