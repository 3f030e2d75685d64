"""The agent example's report: the union of the finished runs (examples/agent_report.py)."""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from examples import agent_io as io  # noqa: E402
from examples import agent_report as report  # noqa: E402

STATS = {"trajectories": 50, "teacher_train_success": 0.5}


def _teacher(workdir: pathlib.Path):
  (workdir / "teacher").mkdir(parents=True)
  io.write_json(workdir / "teacher" / "result.json", dict(
      params=4000, success=0.9, num_tasks=10, train_seconds=12.0))


def _run(workdir: pathlib.Path, method: str, seed: int, success: float):
  d = io.run_dir(workdir, method, seed)
  d.mkdir(parents=True)
  io.write_json(d / "result.json", {
      "method": method, "seed": seed, "success": success, "valid_action_rate": 1.0,
      "steps": 3.0, "reasoning_tokens": 20.0, "kl/reasoning": 0.2, "kl/action": 0.1,
      "kl_train/reasoning": 0.1, "kl_train/action": 0.05,
      "train_seconds": 5.0, "params": 1000, "num_tasks": 10})
  log = [{"kind": "train", "step": s, "loss/reasoning": 1.0 / s, "loss/action": 2.0 / s}
         for s in (1, 2)]
  log += [{"kind": "eval", "step": 2, "success": success, "kl/action": 0.1}]
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))


def test_aggregate_is_mean_and_population_std_over_seeds():
  runs = [{"method": "sad", "seed": s, "train_seconds": 1.0,
           **{k: v for k, _ in report.METRICS for v in [x]}} for s, x in ((0, 0.2), (1, 0.6))]
  agg = report.aggregate(runs)
  assert agg["sad"]["seeds"] == [0, 1]
  assert agg["sad"]["success"] == pytest.approx({"mean": 0.4, "std": 0.2})


def test_report_is_the_union_of_runs_written_by_different_processes(tmp_path):
  _teacher(tmp_path)
  _run(tmp_path, "sad", 0, 0.5)  # process A: --config.methods=sad
  first = report.write_report(tmp_path, student_steps=2, distill_stats=STATS, order=["sad"])
  assert list(first["methods"]) == ["sad"]
  _run(tmp_path, "token_kd", 0, 0.25)  # process B: --config.methods=token_kd,sft
  _run(tmp_path, "sft", 0, 0.125)
  _run(tmp_path, "sft", 1, 0.375)
  second = report.write_report(tmp_path, student_steps=2, distill_stats=STATS,
                               order=["token_kd", "sft"], extra={"note": 1})
  assert list(second["methods"]) == ["token_kd", "sft", "sad"]
  assert [(r["method"], r["seed"]) for r in second["runs"]] == [
      ("token_kd", 0), ("sft", 0), ("sad", 0), ("sft", 1)]
  assert second["note"] == 1 and second["student_params"] == 1000
  assert json.loads((tmp_path / "summary.json").read_text()) == second
  table = (tmp_path / "summary.md").read_text()
  assert "| sft | 2 | 0.250 ± 0.125 |" in table
  assert "| sad | 0.500 | – | +0.250 |" in table  # paired with token_kd on seed 0 only
  assert "| sft | 0.125 | 0.375 | -0.125 |" in table
  assert "4.0x fewer" in table
  assert second["paired"]["sad"] == {"seeds": [0], "diffs": [0.25], "mean": 0.25, "std": None,
                                     "ci95": None, "p": None}  # one seed: no interval
  assert "| sad | 1 | +0.250 ± – | – | – |" in table
  assert second["plots"] == list(report.PLOTS) + [report.PAIRED_PLOT]
  for name in second["plots"]:
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not list(tmp_path.glob("*.tmp"))


def test_archive_keeps_only_the_report_files_and_rebuilds_the_same_report(tmp_path):
  work, dest = tmp_path / "work", tmp_path / "dest"
  _teacher(work)
  io.write_json(work / "config.json", {"env": "calculator"})
  for method, seed, success in (("token_kd", 0, 0.25), ("sad", 0, 0.5), ("sad", 1, 0.75)):
    _run(work, method, seed, success)
  (io.run_dir(work, "sad", 0) / "ckpt").mkdir()  # never copied
  (work / "distill_data.jsonl").write_text("{}\n")
  original = report.write_report(work, student_steps=2, distill_stats=STATS,
                                 order=["token_kd", "sad"])
  assert report.archive(work, dest) == 3
  assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
      "config.json", "students/sad-seed0/metrics.jsonl", "students/sad-seed0/result.json",
      "students/sad-seed1/metrics.jsonl", "students/sad-seed1/result.json",
      "students/token_kd-seed0/metrics.jsonl", "students/token_kd-seed0/result.json",
      "summary.json", "teacher/result.json"]
  assert report.rebuild(dest) == original
  assert (dest / "summary.md").read_text() == (work / "summary.md").read_text()
  assert (dest / report.PAIRED_PLOT).exists()
  old = json.loads((dest / "summary.json").read_text())  # a summary without method_order
  io.write_json(dest / "summary.json", {k: v for k, v in old.items() if k != "method_order"})
  assert report.rebuild(dest) == original  # the order of its runs
  report.main(["--order", "sad", str(dest)])
  rebuilt = json.loads((dest / "summary.json").read_text())
  assert rebuilt["method_order"] == ["sad", "token_kd"]
  assert (dest / "summary.md").read_text().index("| sad |") < (
      dest / "summary.md").read_text().index("| token_kd |")


def test_report_without_runs_writes_only_the_json(tmp_path):
  _teacher(tmp_path)
  summary = report.write_report(tmp_path, student_steps=2, distill_stats=STATS)
  assert summary["runs"] == [] and summary["methods"] == {}
  assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
      "summary.json", "teacher"]


def test_table_without_token_kd_has_no_paired_column(tmp_path):
  _teacher(tmp_path)
  _run(tmp_path, "sad", 0, 0.5)
  report.write_report(tmp_path, student_steps=2, distill_stats=STATS)
  table = (tmp_path / "summary.md").read_text()
  assert "| success | seed 0 |" in table and "token_kd" not in table
  assert not (tmp_path / report.PAIRED_PLOT).exists()


def test_paired_differences_t_interval_and_test_over_common_seeds():
  from scipy import stats
  kd = {0: 0.5, 1: 0.625, 2: 0.75, 3: 0.375}  # binary fractions: exact differences
  sad = {0: 0.5625, 1: 0.6875, 2: 0.875}  # no seed 3: paired on seeds 0-2 only
  runs = [{"method": "token_kd", "seed": s, "success": x} for s, x in kd.items()]
  runs += [{"method": "sad", "seed": s, "success": x} for s, x in sad.items()]
  runs += [{"method": "sft", "seed": s, "success": kd[s] + 0.125} for s in (0, 1)]
  out = report.paired_differences(runs)
  assert list(out) == ["sad", "sft"]
  d = np.asarray([0.0625, 0.0625, 0.125])
  assert out["sad"]["seeds"] == [0, 1, 2]
  np.testing.assert_allclose(out["sad"]["diffs"], d, atol=1e-12)
  assert out["sad"]["mean"] == pytest.approx(d.mean())
  assert out["sad"]["std"] == pytest.approx(d.std(ddof=1))
  half = 4.302653 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
  assert out["sad"]["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], rel=1e-6)
  assert out["sad"]["p"] == pytest.approx(
      stats.ttest_rel([sad[s] for s in range(3)], [kd[s] for s in range(3)]).pvalue)
  assert out["sft"]["std"] == 0.0 and out["sft"]["p"] is None  # equal differences
  assert report.paired_differences([r for r in runs if r["method"] != "token_kd"]) == {}
