"""The report of the agent distillation example: the union of the runs in a workdir.

:func:`write_report` reads every finished run (``students/*/result.json``, each
written by the process that trained it) and the teacher's result, and writes
``summary.json``, ``summary.md`` (mean ± std over seeds; success per seed with
the paired difference to token-level KD, with its mean, 95% t-interval and
paired t-test over seeds: :func:`paired_differences`) and three PNG plots, each
atomically. It depends only on the files, so any process -- or several, one per
method -- can rebuild it; rebuilds are serialized by a lock, so the last one to
finish writes the union of all runs.

A study's report can be kept without its workdir: :func:`archive` copies the few
kilobytes per run it is built from (no checkpoint, data or logits) and
:func:`rebuild` writes the report again from that copy::

  python -m examples.agent_report --archive WORKDIR DEST   # copy, then rebuild in DEST
  python -m examples.agent_report DEST                      # rebuild from DEST
"""
from __future__ import annotations

import argparse
import io
import json
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np
from scipy import stats

from examples import agent_evaluate as evaluate
from examples import agent_io

METRICS = (("success", "success"), ("valid_action_rate", "valid actions"),
           ("steps", "steps"), ("reasoning_tokens", "reasoning tokens"),
           ("kl/reasoning", "KL reasoning"), ("kl/action", "KL action"),
           ("kl_train/reasoning", "KL reasoning (own data)"),
           ("kl_train/action", "KL action (own data)"))
PLOTS = ("loss_per_span.png", "success_curves.png", "success.png")
PAIRED_PLOT = "paired_success.png"  # drawn when a method is paired with the baseline
BASELINE = "token_kd"  # the method every other one is paired with


def _method_rank(order: Sequence[str]):
  rank = {m: i for i, m in enumerate(order)}
  return lambda m: (rank.get(m, len(rank)), m)


def collect_runs(workdir: pathlib.Path, order: Sequence[str] = ()) -> list[dict]:
  """Every finished student run of the workdir, sorted by seed, then method.

  Methods are ordered as in ``order`` first, the others after them by name.
  """
  runs = [json.loads(p.read_text())
          for p in sorted((workdir / "students").glob("*/result.json"))]
  key = _method_rank(order)
  return sorted(runs, key=lambda r: (r["seed"], key(r["method"])))


def aggregate(runs: Sequence[dict], order: Sequence[str] = ()) -> dict[str, dict]:
  """Mean and std (over seeds, ddof=0) of every metric, per method (in ``order`` first)."""
  out = {}
  for m in sorted({r["method"] for r in runs}, key=_method_rank(order)):
    rows = [r for r in runs if r["method"] == m]
    out[m] = {"seeds": [r["seed"] for r in rows]}
    for key, _ in METRICS + (("train_seconds", ""),):
      vals = np.asarray([r[key] for r in rows], np.float64)
      out[m][key] = {"mean": float(vals.mean()), "std": float(vals.std())}
  return out


def paired_differences(runs: Sequence[dict], baseline: str = BASELINE, key: str = "success",
                       order: Sequence[str] = ()) -> dict[str, dict]:
  """Per method, ``key`` minus the baseline's on each seed both have: paired by seed.

  A seed fixes a student's initialization and batch order for every method, so
  the per-seed difference removes the seed's share of the variance. Statistics
  over the ``n`` common seeds: ``mean``, ``std`` (ddof=1), the 95% Student-t
  interval ``mean ± t(0.975, n - 1) * std / sqrt(n)`` (``ci95``) and the
  two-sided p-value of the paired t-test (``p``; Student 1908). ``std``,
  ``ci95`` and ``p`` are None below 2 seeds; ``p`` is None when every
  difference is equal.

  Returns:
    ``{method: {"seeds", "diffs", "mean", "std", "ci95", "p"}}`` for every method
    but the baseline with at least one common seed (in ``order`` first); ``{}``
    without a baseline run.
  """
  base = {r["seed"]: r[key] for r in runs if r["method"] == baseline}
  out = {}
  for m in sorted({r["method"] for r in runs} - {baseline}, key=_method_rank(order)):
    pairs = sorted((r["seed"], r[key] - base[r["seed"]]) for r in runs
                   if r["method"] == m and r["seed"] in base)
    if not pairs:
      continue
    d = np.asarray([x for _, x in pairs], np.float64)
    n, mean = len(d), float(d.mean())
    row = {"seeds": [s for s, _ in pairs], "diffs": d.tolist(), "mean": mean, "std": None,
           "ci95": None, "p": None}
    if n >= 2:
      std = float(d.std(ddof=1))
      half = float(stats.t.ppf(0.975, n - 1)) * std / np.sqrt(n)
      row.update(std=std, ci95=[mean - half, mean + half])
      if std > 0:
        row["p"] = float(2 * stats.t.sf(abs(mean) / (std / np.sqrt(n)), n - 1))
    out[m] = row
  return out


def markdown_table(summary: dict) -> str:
  """``summary.md``: the teacher and student line, mean ± std per method, success per seed."""
  t = summary["teacher"]
  lines = [
      f"Teacher: {t['params']:,} params, held-out success {t['success']:.3f} on "
      f"{t['num_tasks']} tasks ({t['train_seconds']:.0f} s training). Student: "
      f"{summary['student_params']:,} params ({t['params'] / summary['student_params']:.1f}x "
      f"fewer), {summary['student_steps']} steps on {summary['distill_trajectories']} teacher "
      "trajectories.", "",
      "| method | seeds | " + " | ".join(label for _, label in METRICS) + " |",
      "|---|---|" + "---|" * len(METRICS)]
  for m, agg in summary["methods"].items():
    cells = [f"{agg[k]['mean']:.3f} ± {agg[k]['std']:.3f}" for k, _ in METRICS]
    lines.append(f"| {m} | {len(agg['seeds'])} | " + " | ".join(cells) + " |")
  # Success per seed: a seed fixes the initialization and batch order for every
  # method, so differences within a column are paired comparisons.
  success = {(r["method"], r["seed"]): r["success"] for r in summary["runs"]}
  seeds = sorted({r["seed"] for r in summary["runs"]})
  paired = BASELINE in summary["methods"]
  lines += ["", "| success | " + " | ".join(f"seed {s}" for s in seeds)
            + (f" | − {BASELINE}, per seed |" if paired else " |"),
            "|---|" + "---|" * (len(seeds) + paired)]
  for m in summary["methods"]:
    row = [f"{success[(m, s)]:.3f}" if (m, s) in success else "–" for s in seeds]
    if paired:
      row.append(", ".join(f"{success[(m, s)] - success[(BASELINE, s)]:+.3f}" for s in seeds
                           if (m, s) in success and (BASELINE, s) in success)
                 if m != BASELINE else "")
    lines.append(f"| {m} | " + " | ".join(row) + " |")
  if summary.get("paired"):  # the same differences: mean, interval and test over seeds
    lines += ["", f"| success − {BASELINE} | seeds | mean ± std | 95% t-interval | "
              "p (paired t) |", "|---|---|---|---|---|"]
    for m, d in summary["paired"].items():
      std = "–" if d["std"] is None else f"{d['std']:.3f}"
      ci = "–" if d["ci95"] is None else f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
      p = "–" if d["p"] is None else f"{d['p']:.3f}"
      lines.append(f"| {m} | {len(d['seeds'])} | {d['mean']:+.3f} ± {std} | {ci} | {p} |")
  return "\n".join(lines) + "\n"


def _save(fig, path: pathlib.Path) -> None:
  """``fig`` as a PNG at ``path``, atomically."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  agent_io.write_atomic(path, buf.getvalue())


def plot(workdir: pathlib.Path, summary: dict) -> list[str]:
  """Writes :data:`PLOTS` (and :data:`PAIRED_PLOT`) from the runs' logs; returns their names.

  ``loss_per_span.png``: training loss on reasoning and action tokens (each
  method's lowest seed); ``success_curves.png``: held-out success and action KL
  along training (mean ± std over a method's seeds); ``success.png``: final
  held-out success per method against the teacher's.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  methods = summary["methods"]
  logs = {(m, s): agent_io.read_jsonl(agent_io.run_dir(workdir, m, s) / "metrics.jsonl")
          for m, agg in methods.items() for s in agg["seeds"]}
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
  for ax, span in zip(axes, evaluate.REPORT_SPANS):
    for m, agg in methods.items():
      seed = min(agg["seeds"])
      recs = [r for r in logs[(m, seed)] if r["kind"] == "train" and f"loss/{span}" in r]
      ax.plot([r["step"] for r in recs], [r[f"loss/{span}"] for r in recs],
              label=f"{m} (seed {seed})")
    ax.set(title=f"training loss on {span} tokens", xlabel="step", ylabel="per-token loss",
           yscale="log")
    ax.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, workdir / PLOTS[0])
  plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for m, agg in methods.items():
    curves = [[r for r in logs[(m, s)] if r["kind"] == "eval"] for s in agg["seeds"]]
    n = min(len(c) for c in curves)
    steps = [r["step"] for r in curves[0][:n]]
    succ = np.asarray([[r["success"] for r in c[:n]] for c in curves])
    kl = np.asarray([[r["kl/action"] for r in c[:n]] for c in curves])
    axes[0].errorbar(steps, succ.mean(0), yerr=succ.std(0), label=m, capsize=2)
    axes[1].errorbar(steps, kl.mean(0), yerr=kl.std(0), label=m, capsize=2)
  axes[0].set(title="held-out success (curve tasks)", xlabel="step", ylabel="success")
  axes[1].set(title="held-out KL(teacher || student), action tokens", xlabel="step",
              ylabel="KL", yscale="log")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  _save(fig, workdir / PLOTS[1])
  plt.close(fig)

  names = list(methods)
  fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
  means = [methods[m]["success"]["mean"] for m in names]
  stds = [methods[m]["success"]["std"] for m in names]
  ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="tab:blue")
  ax.axhline(summary["teacher"]["success"], color="gray", ls="--", label="teacher")
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  seeds = sorted({len(agg["seeds"]) for agg in methods.values()})
  ax.set(ylabel="held-out success", ylim=(0, 1),
         title=f"student success, mean ± std over {'/'.join(map(str, seeds))} seed(s)")
  ax.legend()
  fig.tight_layout()
  _save(fig, workdir / PLOTS[2])
  plt.close(fig)
  if not summary["paired"]:
    return list(PLOTS)

  paired = summary["paired"]
  fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(paired) + 2), 4))
  for i, d in enumerate(paired.values()):
    ax.plot([i] * len(d["diffs"]), d["diffs"], "o", color="tab:gray", ms=4, alpha=0.7)
    if d["ci95"] is not None:
      ax.errorbar([i], [d["mean"]], yerr=[[d["mean"] - d["ci95"][0]], [d["ci95"][1] - d["mean"]]],
                  fmt="D", color="tab:red", capsize=5)
  ax.axhline(0.0, color="black", lw=0.8)
  ax.set_xticks(range(len(paired)), list(paired), rotation=30, ha="right")
  ax.set(ylabel=f"success − {BASELINE}",
         title=f"paired difference to {BASELINE}\nseeds (dots), mean and 95% t-interval")
  fig.tight_layout()
  _save(fig, workdir / PAIRED_PLOT)
  plt.close(fig)
  return list(PLOTS) + [PAIRED_PLOT]


def write_report(workdir: pathlib.Path, *, student_steps: int, distill_stats: dict,
                 order: Sequence[str] = (), extra: dict | None = None) -> dict:
  """Rebuilds ``summary.{json,md}`` and the plots from the workdir's finished runs.

  Args:
    workdir: the study's workdir (``teacher/result.json`` must exist).
    student_steps: the config's ``student.steps``.
    distill_stats: :func:`examples.agent_data.distill_examples`' stats.
    order: methods to list first (e.g. the invocation's ``config.methods``).
    extra: more top-level fields of ``summary.json`` (e.g. this invocation's times).

  Returns:
    The summary (``summary.json``'s content); ``runs`` empty and no table or plot
    written when no run has finished yet.
  """
  with agent_io.locked(workdir / ".report.lock"):  # a rebuild sees every run before it
    return _write_report(workdir, student_steps, distill_stats, order, extra)


def _write_report(workdir, student_steps, distill_stats, order, extra) -> dict:
  runs = collect_runs(workdir, order)
  summary = {
      "teacher": json.loads((workdir / "teacher" / "result.json").read_text()),
      "student_steps": student_steps,
      "distill_trajectories": distill_stats["trajectories"],
      "teacher_train_success": distill_stats["teacher_train_success"],
      "methods": aggregate(runs, order),
      "paired": paired_differences(runs, order=order),
      "runs": runs,
      **(extra or {}),
  }
  summary["method_order"] = list(summary["methods"])  # summary.json's keys are sorted
  if runs:
    summary["student_params"] = runs[0]["params"]
    agent_io.write_atomic(workdir / "summary.md", markdown_table(summary))
    summary["plots"] = plot(workdir, summary)
  agent_io.write_json(workdir / "summary.json", summary)
  return summary


def archive(workdir: pathlib.Path, dest: pathlib.Path) -> int:
  """Copies what the report is built from to ``dest``, in the workdir's layout.

  ``config.json``, ``summary.json``, ``teacher/result.json`` and every finished
  run's ``result.json`` and ``metrics.jsonl`` (a few tens of KB a run); files
  already in ``dest`` are overwritten, runs only in ``dest`` kept. Returns the
  number of runs copied.
  """
  for name in ("config.json", "summary.json", "teacher/result.json"):
    (dest / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(workdir / name, dest / name)
  results = sorted((workdir / "students").glob("*/result.json"))
  for result in results:
    run = dest / "students" / result.parent.name
    run.mkdir(parents=True, exist_ok=True)
    for name in ("result.json", "metrics.jsonl"):
      shutil.copyfile(result.parent / name, run / name)
  return len(results)


def rebuild(workdir: pathlib.Path, order: Sequence[str] = ()) -> dict:
  """:func:`write_report` again from the files of a workdir or an :func:`archive`.

  The student steps and the distillation data's statistics come from the
  existing ``summary.json``; so does the method order unless ``order`` names
  methods to list first (then ``method_order``, or the order of its runs).
  """
  old = json.loads((workdir / "summary.json").read_text())
  stats = {"trajectories": old["distill_trajectories"],
           "teacher_train_success": old["teacher_train_success"]}
  stored = old.get("method_order") or [r["method"] for r in old["runs"]]
  return write_report(workdir, student_steps=old["student_steps"], distill_stats=stats,
                      order=list(dict.fromkeys([*order, *stored])))


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("dir", type=pathlib.Path, nargs="+",
                      help="DEST to rebuild, or WORKDIR DEST with --archive")
  parser.add_argument("--archive", action="store_true",
                      help="copy WORKDIR's report files to DEST first")
  parser.add_argument("--order", default="",
                      help="comma-separated methods to list first (e.g. sft,token_kd,sad)")
  args = parser.parse_args(argv)
  if len(args.dir) != (2 if args.archive else 1):
    parser.error(f"expected {'WORKDIR DEST' if args.archive else 'DEST'}, got {args.dir}")
  if args.archive:
    print(f"{archive(*args.dir)} runs copied to {args.dir[1]}")
  dest = args.dir[-1]
  rebuild(dest, agent_io.csv_list(args.order))
  print((dest / "summary.md").read_text())


if __name__ == "__main__":
  main()
