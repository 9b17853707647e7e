"""The throughput benchmark runs and writes the rows the README table is built from."""

from __future__ import annotations

import json
import sys

from tests.conftest import load_benchmark


def test_benchmark_writes_one_row_per_method_with_consistent_ratios(tmp_path, monkeypatch, capsys):
    bench = load_benchmark("throughput")
    tiny = {"tiny": dict(teacher="cifar_resnet14", student="cifar_resnet8", size=8, batch=16)}
    monkeypatch.setattr(bench, "PAIRS", tiny)
    out = tmp_path / "rows.json"
    argv = [
        "throughput.py",
        "--device",
        "cpu",
        "--rounds",
        "2",
        "--warmup",
        "0",
        "--pairs",
        "tiny",
        "--json",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["method"] for r in rows] == [
        *bench.METHODS,
        "kd+cache",
        "kd end-to-end",
        "kd end-to-end, 2 specs",
    ]
    low, ratio, high = rows[-1]["vs_one_spec_iqr"][0], rows[-1]["vs_one_spec"], rows[-1]["vs_one_spec_iqr"][1]
    assert 0 < low <= ratio <= high
    for row in rows:
        assert row["pair"] == "tiny" and row["device"] == "cpu" and row["batch_size"] == 16
        assert row["step_ms"] > 0 and row["student_step_ms"] > 0 and row["teacher_forward_ms"] > 0
        assert (
            abs(row["images_per_second"] - 16 / row["step_ms"] * 1e3) < 0.1 + 1e-3 * row["images_per_second"]
        )
        low, high = row["overhead_ratio_iqr"]
        assert 0 < low <= row["overhead_ratio"] <= high
    assert result["machine"]["threads"] >= 1
    assert "| tiny | kd | 16 |" in capsys.readouterr().out
