"""The CPU-runnable part of scripts/gpu_bench.py's replay phase (issue 8): the Pareto rows' recorded plans."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_bench_replays_pareto_rows_on_cpu_smoke(tmp_path):
    rows = [dict(name="fine-only", family="fine-only", method={"peer": None}, schedules=["111111"],
                 kinds=["mmmmmm"]),
            dict(name="ladder + cache", family="ladder + cache", method={"peer": None}, schedules=["114421"],
                 kinds=["mmcmcm"]),
            dict(name="diffusers FBC", family="fbc", method={"peer": {"kind": "fbc"}}, schedules=["111111"],
                 kinds=["mmmmmm"])]
    plans = tmp_path / "pareto.json"
    plans.write_text(json.dumps({"format": "ddit-pareto/1", "rows": rows}))
    schedules = tmp_path / "schedules.json"
    schedules.write_text(json.dumps([[1, 1, 1, 2, 4, 1]]))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_bench.py"), "--cpu-smoke", "--out", str(out),
                        "--schedules", str(schedules), "--plans", str(plans)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert [x["name"] for x in res["replay"]] == ["fine-only", "ladder + cache"]
    assert res["replay"][1]["flop_bound"] > 1.5  # 6 fine steps vs 3 fine + 1 size-4 step run
    assert "diffusers FBC" in res["replay_not_replayed"][0]
    assert "| ladder + cache |" in (out / "results.md").read_text()
