"""``report.md`` and ``curves.png``: written at the end of a run, with accuracies, ratios and curves."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from kdcompress.recipe import validate_recipe
from kdcompress.train import engine
from kdcompress.train.report import CURVES_FILE, write_report
from tests.conftest import tiny_recipe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def kd_run(teacher_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """cifar_resnet8 distilled (KD) from the tiny cifar_resnet14 teacher for 1 epoch, with a paper number."""
    recipe = validate_recipe(
        tiny_recipe(
            "cifar_resnet8",
            "kd",
            teacher={"arch": "cifar_resnet14", "weights": str(teacher_run)},
            paper={"top1": 73.33, "source": "Hinton et al. 2015 (CRD table)"},
        )
    )
    out = tmp_path_factory.mktemp("report") / "kd"
    return engine.run(recipe, out, quiet=True), recipe


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_report_holds_accuracies_ratios_and_paper(kd_run):
    result, _ = kd_run
    text = (result.run_dir / "report.md").read_text()
    recipe_part = _section(text, "Recipe")
    assert "| teacher | cifar_resnet14" in recipe_part and "| method | kd (" in recipe_part
    assert "temperature=" in recipe_part and "digits, 1x8x8 inputs" in recipe_part
    results = _section(text, "Results")
    assert f"| {result.teacher_top1:.2f} |" in results and f"| {result.best_top1:.2f} |" in results
    teacher_row = next(line for line in results.splitlines() if line.startswith("| teacher |"))
    student_row = next(line for line in results.splitlines() if line.startswith("| student (best"))
    ratio_row = next(line for line in results.splitlines() if line.startswith("| teacher / student |"))
    params_ratio = result.teacher_params / result.student_params
    assert f"{params_ratio:.1f}x" in ratio_row and "x faster" in ratio_row and "points" in ratio_row
    for row in (teacher_row, student_row):
        cells = [c.strip() for c in row.strip("|").split("|")]
        flops, latency = cells[3], float(cells[4])
        assert re.fullmatch(r"[\d.]+ [kMG]", flops) and latency > 0
    assert "Paper: 73.33% (Hinton et al. 2015 (CRD table)); this run" in text
    assert "| epoch | loss | train top-1 | val top-1 | img/s |" in text and "\n| 1 |" in text
    assert "```yaml" in text


def test_curves_png_is_next_to_the_report(kd_run):
    result, _ = kd_run
    png = result.run_dir / CURVES_FILE
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert f"]({CURVES_FILE})" in (result.run_dir / "report.md").read_text()


def test_method_facts_and_a_run_without_teacher(kd_run, tmp_path):
    result, recipe = kd_run
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("config.json", "student.safetensors"):
        (folder / name).write_bytes((result.run_dir / name).read_bytes())
    facts = {"student_layers": ["layer1", "layer2"], "connector": "conv1x1"}
    write_report(dataclasses.replace(result, run_dir=folder), recipe, facts)
    text = (folder / "report.md").read_text()
    assert '- student_layers: `["layer1", "layer2"]`' in text and "- connector: conv1x1" in text

    scratch = validate_recipe({**recipe.model_dump(mode="json"), "teacher": None, "method": {"name": "ce"}})
    alone = dataclasses.replace(result, run_dir=folder, teacher_top1=None, teacher_params=None)
    write_report(alone, scratch, {})
    text = (folder / "report.md").read_text()
    assert "| teacher |" not in _section(text, "Results") and "teacher / student" not in text
    assert f"| {result.best_top1:.2f} |" in text and (folder / CURVES_FILE).is_file()
