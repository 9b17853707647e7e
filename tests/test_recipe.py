"""The Recipe: precedence of file, flags and --set, typed overrides, and one-sentence errors."""

from __future__ import annotations

import pytest

from kdcompress.errors import UserError
from kdcompress.methods import resolve_method
from kdcompress.recipe import apply_override, build_recipe, merge


def write(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_precedence_file_then_flags_then_set(tmp_path):
    path = write(
        tmp_path, "student: {arch: resnet18}\ntrain: {epochs: 7, batch_size: 32}\noptim: {lr: 0.1}\n"
    )
    recipe = build_recipe(
        path, {"train": {"epochs": 3, "batch_size": None}}, ["train.epochs=5", "optim.lr=0.2"]
    )
    assert recipe.train.epochs == 5  # --set beats the flag
    assert recipe.train.batch_size == 32  # an unset flag never erases the file's value
    assert recipe.optim.lr == 0.2
    assert recipe.student.arch == "resnet18"


def test_set_values_are_yaml_typed():
    data = {"student": {"arch": "x"}}
    for assignment in [
        "schedule.milestones=[3, 6]",
        "train.compile=true",
        "data.image_size=null",
        "method.w_kd=0.5",
    ]:
        apply_override(data, assignment)
    assert data["schedule"]["milestones"] == [3, 6]
    assert data["train"]["compile"] is True
    assert data["data"]["image_size"] is None
    assert data["method"]["w_kd"] == 0.5  # method options are free keys, validated by the method


def test_unknown_field_suggests_the_right_one():
    with pytest.raises(UserError, match=r"train has no field 'epoch'.*'train.epochs'"):
        apply_override({}, "train.epoch=3")


def test_malformed_override_is_explained():
    with pytest.raises(UserError, match="key.path=value"):
        apply_override({}, "train.epochs")


def test_bad_value_names_the_field():
    with pytest.raises(UserError, match=r"Recipe field 'train.epochs'.*got 'many'"):
        build_recipe(None, {"student": {"arch": "resnet18"}}, ["train.epochs=many"])


def test_missing_student_is_one_sentence():
    with pytest.raises(UserError, match="no student architecture"):
        build_recipe(None, {}, [])


def test_missing_or_invalid_recipe_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_recipe(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        build_recipe(write(tmp_path, "student: [unclosed\n"))


def test_merge_skips_unset_flags_and_empty_sections():
    merged = merge(
        {"teacher": {"arch": "a", "weights": "w"}}, {"teacher": {"arch": None}, "method": {"name": None}}
    )
    assert merged == {"teacher": {"arch": "a", "weights": "w"}}


def test_method_options_are_validated_by_the_method():
    cls, config = resolve_method("kd", {"temperature": 2})
    assert cls.name == "kd" and config.temperature == 2 and config.w_ce == 0.1
    with pytest.raises(
        UserError,
        match=r"no option 'temprature'; its options are: standardize_logits, temperature, w_ce, w_kd\.",
    ):
        resolve_method("kd", {"temprature": 2})
    with pytest.raises(UserError, match="Unknown method 'kdd'.*Did you mean 'kd'"):
        resolve_method("kdd", {})
