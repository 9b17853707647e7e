"""The GPU check's report (``benchmarks/gpu_report.py``) on made-up stage outputs: targets, projection,
stage outcomes and test counts, in the JSON and the markdown."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import load_benchmark


def row(pair: str, method: str, batch: int, images_per_second: float, overhead: float) -> dict:
    return {
        "pair": pair,
        "method": method,
        "device": "cuda",
        "batch_size": batch,
        "step_ms": batch / images_per_second * 1e3,
        "images_per_second": images_per_second,
        "student_step_ms": 1.0,
        "teacher_forward_ms": 1.0,
        "overhead_ratio": overhead,
        "overhead_ratio_iqr": [overhead - 0.01, overhead + 0.01],
        "rounds": 10,
    }


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_cuda" name="test_a"/>
<testcase classname="tests.test_cuda" name="test_b">
  <failure message="AssertionError: boom&#10;more"/></testcase>
<testcase classname="tests.test_cuda" name="test_c"><skipped message="needs a CUDA GPU"/></testcase>
</testsuite></testsuites>"""


def test_report_checks_targets_and_projects_240_epochs(tmp_path, capsys):
    gpu_report = load_benchmark("gpu_report")
    pair = "resnet32x4->resnet8x4"
    eager = {
        "machine": {"command": "python benchmarks/throughput.py --device cuda"},
        "rows": [
            row(pair, "kd", 64, 24_000, 1.04),
            row(pair, "dkd", 64, 20_000, 1.20),
            row(pair, "kd+cache", 64, 40_000, 0.6),
            row(pair, "kd end-to-end", 64, 25_000, 1.0),
        ],
    }
    graphs = {
        "machine": {"command": "... --compile-mode reduce-overhead"},
        "rows": [row(pair, "kd", 64, 1, 1.0)],
    }
    files = {"tests": tmp_path / "tests.xml", "eager": tmp_path / "eager.json", "graphs": tmp_path / "g.json"}
    files["tests"].write_text(JUNIT)
    files["eager"].write_text(json.dumps(eager))
    files["graphs"].write_text(json.dumps(graphs))
    env = tmp_path / "env.json"
    env.write_text(json.dumps({"gpu": "NVIDIA H200", "python": "3.12.3", "packages": {"torch": "2.11.0"}}))
    stages = [
        ["env", "0", "9", str(env)],
        ["tests", "1", "95", str(files["tests"])],
        ["eager", "0", "80", str(files["eager"])],
        ["reduce-overhead", "124", "130", str(files["graphs"])],
        ["missing", "2", "1", str(tmp_path / "never-written.json")],
    ]
    out = tmp_path / "results"
    argv = ["report", "--out", str(out), "--env", str(env)]
    assert gpu_report.main(argv + [arg for stage in stages for arg in ("--stage", *stage)]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    statuses = [s["status"] for s in report["stages"]]
    assert statuses == ["ok", "failed (exit 1)", "ok", "timed out", "failed (exit 2)"]
    assert report["tests"] == {
        "passed": 1,
        "failed": 1,
        "skipped": 1,
        "failures": [{"test": "tests.test_cuda::test_b", "message": "AssertionError: boom"}],
    }
    assert set(report["throughput"]) == {"eager", "reduce-overhead"}  # the cut-short stage kept its rows
    assert report["environment"]["gpu"] == "NVIDIA H200"
    met = {(t["mode"], t["method"]): (t["value"], t["met"]) for t in report["targets"]}
    assert met == {
        ("eager", "kd"): (1.04, True),
        ("eager", "dkd"): (1.20, False),
        ("eager", "kd end-to-end"): (25_000, True),
        ("reduce-overhead", "kd"): (1.0, True),
        ("reduce-overhead", "kd end-to-end"): (None, None),  # the stage timed out before that row
    }
    assert report["projection"] == [
        {
            "pair": pair,
            "mode": "eager",
            "batch_size": 64,
            "images_per_second": 25_000,
            "hours_240_epochs": 0.13,  # 240 * 50,000 / 25,000 s
        }
    ]
    text = (out / "gpu_check.md").read_text()
    assert "NVIDIA H200" in text and "1 passed, 1 failed, 1 skipped." in text
    assert "| overhead ratio <= 1.10 | resnet32x4->resnet8x4 | eager | dkd | 64 | 1.2 | **no** |" in text
    assert "not measured" in text and "timed out" in text and "## Throughput: reduce-overhead" in text
    assert text in capsys.readouterr().out


def test_env_names_what_keeps_the_check_from_running(tmp_path, monkeypatch):
    gpu_report = load_benchmark("gpu_report")
    assert gpu_report.main(["env", "--json", str(tmp_path / "cpu.json"), "--device", "cpu"]) == 0
    info = json.loads((tmp_path / "cpu.json").read_text())
    assert info["problems"] == [] and info["packages"]["torch"] == torch.__version__
    assert Path(info["kdcompress"]).name == "kdcompress"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_report.main(["env", "--json", str(tmp_path / "cuda.json"), "--device", "cuda"]) == 1
    assert json.loads((tmp_path / "cuda.json").read_text())["problems"] == [
        "DEVICE=cuda but torch sees no CUDA GPU"
    ]
