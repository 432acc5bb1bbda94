"""tools/ablations.py keeps every finished run in a committed record and makes its tables from it,
so the tables outlive the run folders (a new machine) and every cell can be traced to its runs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_tool(monkeypatch):
    spec = importlib.util.spec_from_file_location("ablations", REPO / "tools" / "ablations.py")
    tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ablations", tool)  # its dataclasses look their module up there
    spec.loader.exec_module(tool)
    return tool


def test_finished_runs_enter_the_record_once_and_the_tables_come_from_it(tmp_path: Path, monkeypatch) -> None:
    tool = load_tool(monkeypatch)
    record = tmp_path / "ablation_runs.jsonl"
    monkeypatch.setattr(tool, "RECORD", record)
    monkeypatch.setattr(tool, "cpu_latency_ms", lambda variant: 1.0)  # the latency column is not under test
    args = argparse.Namespace(runs_dir=tmp_path / "runs", epochs=15, per_class=500, seeds=3)
    v1, v2 = tool.Variant("shufflenet_v1_g3_x0_5"), tool.Variant("shufflenet_v2_x0_5")
    for variant, seed, top1 in [(v1, 0, 60.0), (v1, 1, 62.0), (v2, 0, 55.0), (v2, 2, 57.0)]:
        work = tool.run_dir(args, variant, seed)
        work.mkdir(parents=True)
        (work / "summary.json").write_text(json.dumps({"val_top1": top1, "val_top5": 95.0}))
        tool.record_finished(args, variant, seed)
        tool.record_finished(args, variant, seed)  # a second call (the next session's --report) adds nothing
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["variant"], r["seed"], r["val_top1"]) for r in rows] == [
        ("shufflenet_v1_g3_x0_5", 0, 60.0), ("shufflenet_v1_g3_x0_5", 1, 62.0),
        ("shufflenet_v2_x0_5", 0, 55.0), ("shufflenet_v2_x0_5", 2, 57.0)]

    shutil.rmtree(args.runs_dir)  # the run folders are gone
    assert tool.final_top1(args, v1) == [60.0, 62.0]
    tables = tool.report(args)
    assert "| shufflenet_v1_g3_x0_5 | 61.00 ± 1.41 | 2 |" in tables
    assert "shufflenet_v2_x0_5 > shufflenet_v1_g3_x0_5: **does not hold** (-5.00 points)" in tables
    assert tool.final_top1(argparse.Namespace(**{**vars(args), "epochs": 30}), v1) == []  # another scale, another table
