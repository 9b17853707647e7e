"""The feature-KD benchmark's ``--stage collect`` reports what finished runs show, and says when it is all.

The README's feature-KD table is built from this JSON; a row that counted an unfinished seed, a gain
taken over a ``ce`` that is not the best, or ``complete: true`` with a seed missing would mislead it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_benchmark


def fake_run(folder: Path, top1: list[float], finished: bool = True) -> None:
    """A run folder as the engine leaves it: one metrics row per epoch, report.md written last."""
    folder.mkdir(parents=True)
    rows = [{"epoch": epoch, "val_top1": value} for epoch, value in enumerate(top1, 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if finished:
        (folder / "report.md").write_text("# run\n")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    out = tmp_path / "runs"
    fake_run(out / "lr0.002/ce/seed0", [70.0, 74.0])
    fake_run(out / "lr0.01/ce/seed0", [80.0, 79.0])
    fake_run(out / "lr0.002-crop_flip/ce/seed0", [72.0])
    for seed, score in enumerate([84.0, 86.0]):  # the best ce: lr 0.01 with crop + flip
        fake_run(out / f"lr0.01-crop_flip/ce/seed{seed}", [score - 5, score])
    fake_run(out / "lr0.01-crop_flip/ce/seed2", [60.0], finished=False)  # killed: not a result
    fake_run(out / "lr0.01-crop_flip/kd/seed0", [84.5])
    for seed, score in enumerate([88.0, 89.0, 90.0]):
        fake_run(out / f"lr0.002/featkd-auto/seed{seed}", [score])
    fake_run(out / "lr0.002/featkd-ce/seed0", [83.0])
    fake_run(tmp_path / "teacher", [90.0, 91.5])
    return out


def collect(runs: Path, seeds: list[int]) -> dict:
    bench = load_benchmark("featkd_pretrained")
    rates, augments = ["0.002", "0.01"], ["none", "crop_flip"]
    return bench.collect(runs, rates, augments, "0.002", runs.parent / "teacher", seeds, ["featkd-auto"])


def test_gains_are_over_the_best_ce_of_its_finished_seeds(runs: Path) -> None:
    document = collect(runs, [0, 1, 2])
    assert document["best_ce"]["lr"] == 0.01 and document["best_ce"]["augment"] == "crop_flip"
    assert document["best_ce"]["seeds"] == [0, 1] and document["best_ce"]["best_top1_mean"] == 85.0
    assert document["teacher_top1"] == 91.5
    rows = {row["run"]: row for row in document["rows"]}
    assert rows["featkd-auto"]["seeds"] == [0, 1, 2] and rows["featkd-auto"]["gain_vs_ce"] == 4.0
    assert rows["ours-ce"]["gain_vs_ce"] == -2.0 and rows["ce (same optimizer)"]["best_top1_mean"] == 74.0
    # A method trained at a rate of the search is a row, labelled with that setting.
    assert (rows["kd"]["lr"], rows["kd"]["augment"], rows["kd"]["gain_vs_ce"]) == (0.01, "crop_flip", -0.5)
    cells = {(cell["lr"], cell["augment"]): cell for cell in document["ce_search"]}
    assert cells[(0.01, "crop_flip")]["top1"] == 84.0 and cells[(0.01, "crop_flip")]["seeds"] == [0, 1]


def test_complete_only_when_every_asked_run_finished(runs: Path) -> None:
    assert collect(runs, [0, 1])["complete"] is True
    assert collect(runs, [0, 1, 2])["complete"] is False  # the best ce's seed 2 was killed
    (runs / "lr0.002-crop_flip/ce/seed0/report.md").unlink()  # one cell of the search unfinished
    assert collect(runs, [0, 1])["complete"] is False
