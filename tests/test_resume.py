"""An interrupted run resumes to exactly the weights of an uninterrupted one; crashes never corrupt."""

from __future__ import annotations

import pytest
import torch

from kdcompress import checkpoint
from kdcompress.recipe import validate_recipe
from kdcompress.train import engine
from tests.conftest import ctrl_c_at_epoch, tiny_recipe


def final_weights(run_dir):
    return checkpoint.load_tensors(run_dir / "last" / "student.safetensors")


@pytest.mark.parametrize("method", ["ce", "kd"])
def test_resume_after_interruption_matches_uninterrupted(tmp_path, teacher_run, method):
    sections = {"train": {"epochs": 3}, "data": {"augment": "crop_flip"}, "schedule": {"name": "cosine"}}
    if method == "kd":
        sections["teacher"] = {"arch": "cifar_resnet14", "weights": str(teacher_run)}
    recipe = validate_recipe(tiny_recipe("cifar_resnet8", method, **sections))
    engine.run(recipe, tmp_path / "full", quiet=True)

    with ctrl_c_at_epoch(3), pytest.raises(KeyboardInterrupt):
        engine.run(recipe, tmp_path / "cut", quiet=True)
    assert checkpoint.last_dir(tmp_path / "cut") is not None  # epochs 1-2 survived the crash
    result = engine.run(recipe, tmp_path / "cut", resume=True, quiet=True)

    full, resumed = final_weights(tmp_path / "full"), final_weights(tmp_path / "cut")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 3


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    folder = tmp_path / "last"
    with checkpoint.atomic_dir(folder) as tmp:
        (tmp / "state.pt").write_text("epoch 1")
    with pytest.raises(RuntimeError), checkpoint.atomic_dir(folder) as tmp:
        (tmp / "state.pt").write_text("half of epoch 2")
        raise RuntimeError("disk full")
    assert (folder / "state.pt").read_text() == "epoch 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temp leftovers


def test_resume_without_checkpoint_is_a_user_error(tmp_path):
    from kdcompress.errors import UserError

    with pytest.raises(UserError, match="nothing to resume"):
        engine.run(validate_recipe(tiny_recipe()), tmp_path / "empty", resume=True, quiet=True)
