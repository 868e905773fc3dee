"""`vimi bench memory`: the figures are there and consistent (speed itself is not asserted)."""

import json
import subprocess
import sys


def test_bench_memory_json(project, tmp_path):
    out_file = tmp_path / "memory.json"
    out = subprocess.run([sys.executable, "-m", "vimi", "bench", "memory", "--rows", "200", "--clips", "40",
                          "--out", str(out_file), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == json.loads(out_file.read_text())
    assert result["ingest_webdataset"]["rows"] == 200 and result["ingest_webdataset"]["quarantined"] == 0
    gen = result["generation"]
    assert gen["memory_docs"] == 200 and gen["train_clips"] == 40 and gen["clip_shape"] == [8, 16, 16, 3]
    for section in ("random_access_videos", "random_access_memory"):
        figures = result[section]
        assert figures["ratio_batch_32_vs_1"] == figures["batch_32_rows_per_s"] / figures["batch_1_rows_per_s"]
    assert result["ingest_webdataset"]["ratio_vs_baseline"] > 0
