"""The benchmark harness still runs (quick mode, tiny models); no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_harness_runs_in_quick_mode_and_writes_every_section(tmp_path):
    out, report = tmp_path / "bench.json", tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--device", "cpu", "--quick", "--json", str(out), "--markdown", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"machine", "engine", "flops", "quality", "memory", "cpu_reference", "model_load", "orchestration", "scoring"} <= set(results)
    assert not any("error" in value for value in results.values() if isinstance(value, dict))
    assert [row["batch"] for row in results["engine"]] == [1, 4]
    assert all(row["s_per_step"] > 0 for row in results["engine"])
    assert results["orchestration"][0]["items"] == 16 and results["scoring"]["images_per_s"] > 0
    assert results["quality"]["alone_vs_batch_max_pixel_diff"] <= 2, "an item's image does not depend on its batch"
    assert abs(results["quality"]["fp32_rerun_vs_fp32"]) < 1e-4, "on a CPU the same seeds give the same run"
    assert results["flops"]["tflop_per_step"] > 0 and results["cpu_reference"]["step_vs_reference"] > 0
    for heading in ("1. engine", "1b. quality", "1c. FLOPs", "2. memory", "2b. CPU", "3. model load", "4. orchestration", "5. scoring"):
        assert heading in done.stdout
    entry = report.read_text()
    assert "python -m benchmarks.run --device cpu --quick" in entry and "| variant | batch | s_per_step |" in entry
