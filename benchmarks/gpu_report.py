"""The two ends of ``benchmarks/gpu_check.sh``: what the machine has, and the one report of the check.

``env --json FILE``: Python, torch, CUDA and the GPU, and whether each dependency and kdcompress itself
import; exits 1 when the check cannot run (an import fails, or ``--device cuda`` without a GPU), naming
what is missing and how to carry it.

``report --out DIR ...``: reads what the stages left (pytest's JUnit XML, ``throughput.py``'s JSON) and
writes ``gpu_check.json`` (everything) and ``gpu_check.md`` (the tables) into DIR: stage outcomes, the
``cuda`` tests, the targets (overhead ratio <= 1.10 for every logit method, >= 20,000 images/s end to
end for kd resnet32x4 -> resnet8x4 at batch 64), a 240-epoch projection, and the throughput rows.

Standard library only (the dependencies are imported, never required), so a machine whose install
failed still gets a report that says so.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

#: Import names of kdcompress's dependencies (pyproject.toml), with their distribution names.
DEPENDENCIES = {
    "torch": "torch",
    "timm": "timm",
    "typer": "typer",
    "rich": "rich",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxscript": "onnxscript",
    "safetensors": "safetensors",
    "yaml": "pyyaml",
    "pydantic": "pydantic",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "numpy": "numpy",
    "pytest": "pytest",
}
LOGIT_METHODS = ("kd", "dkd", "nkd", "sd-kd", "sd-dkd", "luminet")
OVERHEAD_LIMIT = 1.10
TARGET_PAIR, TARGET_BATCH, TARGET_IMAGES_PER_SECOND = "resnet32x4->resnet8x4", 64, 20_000
END_TO_END = "kd end-to-end"
#: The projection's epoch: CIFAR-100's 50,000 training images, 240 epochs as in the CIFAR recipes.
EPOCH_IMAGES, EPOCHS = 50_000, 240


# ---- env ----------------------------------------------------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    """Versions and importability of everything the check needs; ``problems`` is empty when it can run."""
    found: dict[str, str | None] = {}
    problems: list[str] = []
    for module, distribution in DEPENDENCIES.items():
        try:
            found[distribution] = getattr(importlib.import_module(module), "__version__", "?")
        except Exception as exc:  # any import failure means the check cannot run on this machine
            found[distribution] = None
            problems.append(f"{distribution} does not import ({type(exc).__name__}: {exc})")
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": found,
        "commit": _commit(),
    }
    try:
        import kdcompress

        info["kdcompress"] = str(Path(kdcompress.__file__).parent)
    except Exception as exc:
        problems.append(f"kdcompress does not import ({type(exc).__name__}: {exc})")
    if found.get("torch"):
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        elif device.startswith("cuda"):
            problems.append("DEVICE=cuda but torch sees no CUDA GPU")
    missing = [name for name, version in found.items() if version is None]
    if missing:
        problems.append(
            "carry the missing packages as wheels in .whl/ (bash benchmarks/gpu_wheels.sh "
            + " ".join(missing)
            + " fetches them where pip can reach PyPI)"
        )
    info["problems"] = problems
    return info


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


# ---- report -------------------------------------------------------------------------------------------


def stage_status(rc: int) -> str:
    """A stage's outcome in words; ``timeout`` exits 124 (137 once it had to kill)."""
    if rc == 0:
        return "ok"
    if rc in (124, 137):
        return "timed out"
    return f"failed (exit {rc})"


def read_junit(path: Path) -> dict[str, Any] | None:
    """Counts and failures from pytest's ``--junitxml`` file (None when the stage wrote none)."""
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    summary = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            summary["failed"] += 1
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            summary["failures"].append({"test": name, "message": message[0] if message else ""})
        elif case.find("skipped") is not None:
            summary["skipped"] += 1
        else:
            summary["passed"] += 1
    return summary


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def targets(throughput: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every measured row checked against its target; the end-to-end target also when not measured."""
    checks = []
    for mode, result in throughput.items():
        for row in result["rows"]:
            if row["method"] in LOGIT_METHODS:
                value = row["overhead_ratio"]
                checks.append(
                    {
                        "target": f"overhead ratio <= {OVERHEAD_LIMIT:.2f}",
                        "pair": row["pair"],
                        "mode": mode,
                        "method": row["method"],
                        "batch_size": row["batch_size"],
                        "value": value,
                        "met": value <= OVERHEAD_LIMIT,
                    }
                )
    for mode, result in throughput.items():
        rows = [
            r
            for r in result["rows"]
            if (r["pair"], r["method"], r["batch_size"]) == (TARGET_PAIR, END_TO_END, TARGET_BATCH)
        ]
        value = rows[0]["images_per_second"] if rows else None
        checks.append(
            {
                "target": f">= {TARGET_IMAGES_PER_SECOND:,} images/s end to end",
                "pair": TARGET_PAIR,
                "mode": mode,
                "method": END_TO_END,
                "batch_size": TARGET_BATCH,
                "value": value,
                "met": None if value is None else value >= TARGET_IMAGES_PER_SECOND,
            }
        )
    return checks


def projection(throughput: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Hours for 240 epochs of 50,000 images at each end-to-end row's sustained rate."""
    rows = []
    for mode, result in throughput.items():
        for row in result["rows"]:
            if row["method"] == END_TO_END:
                rate = row["images_per_second"]
                rows.append(
                    {
                        "pair": row["pair"],
                        "mode": mode,
                        "batch_size": row["batch_size"],
                        "images_per_second": rate,
                        "hours_240_epochs": round(EPOCHS * EPOCH_IMAGES / rate / 3600, 2),
                    }
                )
    return rows


def build_report(
    env: dict[str, Any] | None,
    stages: list[tuple[str, int, int, Path]],
    device: str,
    quick: bool,
) -> dict[str, Any]:
    """The whole check as one dict (what ``gpu_check.json`` holds)."""
    report: dict[str, Any] = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device,
        "quick": quick,
        "environment": env,
        "stages": [],
        "tests": None,
        "throughput": {},
    }
    for name, rc, seconds, path in stages:
        report["stages"].append({"name": name, "status": stage_status(rc), "rc": rc, "seconds": seconds})
        if path.suffix == ".xml":
            report["tests"] = read_junit(path)
            continue
        result = read_json(path)
        if result is not None and "rows" in result:  # throughput.py's; a stage cut short keeps its pairs
            report["throughput"][name] = result
    report["targets"] = targets(report["throughput"])
    report["projection"] = projection(report["throughput"])
    return report


def _cell(value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):  # three significant digits, whole numbers from 100 on
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report's tables, for a reader."""
    env = report["environment"] or {}
    where = env.get("gpu") or f"no GPU (device {report['device']})"
    torch_version = (env.get("packages") or {}).get("torch")
    quick = "; QUICK (tiny settings: the numbers mean nothing)" if report["quick"] else ""
    lines = [
        "# GPU check",
        "",
        f"{where}; torch {torch_version}; python {env.get('python')}; commit {env.get('commit')}; "
        f"{report['generated']}{quick}",
        "",
    ]
    for problem in env.get("problems") or []:
        lines.append(f"- problem: {problem}")
    lines += ["", "## Stages", ""]
    lines += _table(
        ["stage", "status", "seconds"], [[s["name"], s["status"], s["seconds"]] for s in report["stages"]]
    )
    tests = report["tests"]
    lines += ["", "## Tests (`pytest -m cuda`)", ""]
    if tests is None:
        lines.append("No test results were written.")
    else:
        lines.append(f"{tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped.")
        lines += [f"- **{f['test']}**: {f['message']}" for f in tests["failures"]]
    lines += ["", "## Targets", ""]
    lines += _table(
        ["target", "pair", "mode", "method", "batch", "value", "met"],
        [
            [t["target"], t["pair"], t["mode"], t["method"], t["batch_size"], t["value"], t["met"]]
            for t in report["targets"]
        ],
    )
    lines += ["", f"## Projection: {EPOCHS} epochs of {EPOCH_IMAGES:,} images", ""]
    lines += _table(
        ["pair", "mode", "batch", "img/s", "hours"],
        [
            [p["pair"], p["mode"], p["batch_size"], p["images_per_second"], p["hours_240_epochs"]]
            for p in report["projection"]
        ],
    )
    for mode, result in report["throughput"].items():
        lines += ["", f"## Throughput: {mode}", "", f"`{result['machine']['command']}`", ""]
        lines += _table(
            ["pair", "method", "batch", "step ms", "img/s", "student ms", "teacher ms", "overhead (IQR)"],
            [
                [
                    r["pair"],
                    r["method"],
                    r["batch_size"],
                    r["step_ms"],
                    r["images_per_second"],
                    r["student_step_ms"],
                    r["teacher_forward_ms"],
                    "{:.3f} ({:.2f}-{:.2f})".format(r["overhead_ratio"], *r["overhead_ratio_iqr"]),
                ]
                for r in result["rows"]
            ],
        )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_file, md_file = out / "gpu_check.json", out / "gpu_check.md"
    json_file.write_text(json.dumps(report, indent=2) + "\n")
    md_file.write_text(markdown(report))
    return json_file, md_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env_parser = commands.add_parser("env", help="probe the machine; exit 1 when the check cannot run")
    env_parser.add_argument("--json", type=Path, required=True)
    env_parser.add_argument("--device", default="cuda")
    report_parser = commands.add_parser("report", help="write gpu_check.json and gpu_check.md")
    report_parser.add_argument("--out", type=Path, required=True)
    report_parser.add_argument("--env", type=Path, required=True)
    report_parser.add_argument("--device", default="cuda")
    report_parser.add_argument("--quick", action="store_true")
    report_parser.add_argument(
        "--stage", nargs=4, action="append", default=[], metavar=("NAME", "RC", "SECONDS", "FILE")
    )
    args = parser.parse_args(argv)
    if args.command == "env":
        info = environment(args.device)
        args.json.write_text(json.dumps(info, indent=2) + "\n")
        for problem in info["problems"]:
            print(f"problem: {problem}", file=sys.stderr)
        return 1 if info["problems"] else 0
    stages = [(name, int(rc), int(seconds), Path(file)) for name, rc, seconds, file in args.stage]
    report = build_report(read_json(args.env), stages, args.device, args.quick)
    for path in write_report(report, args.out):
        print(f"wrote {path}")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
