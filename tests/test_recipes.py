"""The shipped recipes: every file validates, CIFAR-100 recipes follow the papers' protocol and name zoo
models, names resolve to files, and `kdcompress recipes list | show | methods` print them."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
from rich.console import Console

from kdcompress.cli import app
from kdcompress.errors import UserError
from kdcompress.methods import resolve_method
from kdcompress.recipe import read_yaml, validate_recipe
from kdcompress.recipe_catalog import (
    RECIPES_ENV,
    list_recipes,
    recipe_files,
    recipes_root,
    resolve_recipe_path,
)

ROOT = Path(__file__).resolve().parent.parent / "kdcompress" / "recipes"
ALL = sorted(ROOT.rglob("*.yaml"))
CIFAR = sorted((ROOT / "cifar100").rglob("*.yaml"))
LOGIT_METHODS = ("kd", "dkd", "sd-kd", "sd-dkd", "luminet")
CIFAR_LOGIT = [p for p in CIFAR if p.stem in LOGIT_METHODS]
FMNIST_RECIPES = [f"fashion-mnist/{m}" for m in ("ce", "kd", "dkd", "nkd", "sd-kd", "sd-dkd", "luminet")]

# published names of the CRD / mdistiller teacher checkpoints
PUBLISHED = {"resnet32x4": "resnet32x4", "wrn_40_2": "wrn_40_2", "resnet56": "resnet56", "vgg13": "vgg13",
             "resnet50": "ResNet50"}  # fmt: skip
PAIRS = {
    "resnet32x4-resnet8x4", "wrn_40_2-wrn_16_2", "resnet56-resnet20", "vgg13-vgg8",
    "resnet32x4-shufflev2", "resnet50-mobilenetv2", "resnet32x4-shufflev1", "wrn_40_2-shufflev1",
    "vgg13-mobilenetv2", "resnet50-vgg8",
}  # fmt: skip
DKD_BETA = {"resnet56-resnet20": 2, "wrn_40_2-wrn_16_2": 6, "vgg13-vgg8": 6, "vgg13-mobilenetv2": 6}
SIMILAR = {"resnet32x4-resnet8x4", "vgg13-vgg8", "wrn_40_2-wrn_16_2", "resnet56-resnet20"}


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables wide enough that names are not wrapped in the captured output."""
    monkeypatch.setattr("kdcompress.cli.recipes.console", Console(width=300))


def test_the_index_finds_the_checkout_recipes(monkeypatch):
    monkeypatch.delenv(RECIPES_ENV, raising=False)
    assert recipes_root().resolve() == ROOT
    assert recipe_files() == sorted(ALL, key=lambda p: p.relative_to(ROOT).with_suffix("").as_posix())
    assert len(ALL) >= 50 + 10 + 1 + 7


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.relative_to(ROOT).with_suffix("").as_posix())
def test_every_recipe_validates(path):
    recipe = validate_recipe(read_yaml(path))
    method_cls, config = resolve_method(recipe.method.name, recipe.method_options())
    if method_cls.needs_teacher:
        assert recipe.teacher is not None and recipe.teacher.arch
    for spec in (recipe.student, recipe.teacher):
        if spec is not None:
            assert timm.is_model(spec.arch), spec.arch
    if recipe.paper is not None and recipe.paper.top1 is not None:
        assert recipe.paper.source, "a paper number names its source"
    if method_cls.name == "sdd" and path.is_relative_to(ROOT / "cifar100"):
        assert recipe.train.grad_clip == 40


def test_cifar100_recipes_follow_the_protocol():
    assert {p.parent.name for p in CIFAR_LOGIT} == PAIRS
    assert len(CIFAR_LOGIT) == len(PAIRS) * len(LOGIT_METHODS)
    for path in CIFAR_LOGIT:
        pair, method = path.parent.name, path.stem
        recipe = validate_recipe(read_yaml(path))
        teacher, student = pair.split("-")
        assert recipe.teacher.arch == f"cifar_{teacher}" and recipe.student.arch == f"cifar_{student}"
        assert (
            recipe.teacher.weights
            == f"/path/to/cifar_teachers/{PUBLISHED[teacher]}_vanilla/ckpt_epoch_240.pth"
        )
        assert recipe.data.source == "cifar100:/path/to/cifar-100-python"
        assert path.read_text().startswith("#") and "--set" in path.read_text().split("teacher:")[0]
        assert (recipe.train.epochs, recipe.train.batch_size) == (240, 64)
        assert recipe.schedule.name == "step" and recipe.schedule.milestones == [150, 180, 210]
        assert recipe.optim.weight_decay == 5e-4 and recipe.optim.momentum == 0.9
        small = student.startswith(("shufflev", "mobilenet"))
        if method != "luminet" or small:
            assert recipe.optim.lr == (0.01 if small else 0.05), path
        _, config = resolve_method(recipe.method.name, recipe.method_options())
        if method in ("dkd", "sd-dkd"):
            assert config.beta == DKD_BETA.get(pair, 8), path
        if method.startswith("sd-"):
            assert config.scales == ([1, 2] if pair in SIMILAR else [1, 2, 4]), path


def test_cifar100_architectures_build():
    archs = set()
    for path in CIFAR:
        recipe = validate_recipe(read_yaml(path))
        archs |= {recipe.teacher.arch, recipe.student.arch}
    for arch in sorted(archs):
        assert arch.startswith("cifar_")
        model = timm.create_model(arch, num_classes=100)
        assert model.get_classifier().out_features == 100


def test_paper_numbers_where_the_specification_gives_them():
    top1 = {e.name: e.paper_top1 for e in list_recipes()}
    assert top1["cifar100/resnet32x4-resnet8x4/dkd"] == 76.32
    assert top1["cifar100/resnet32x4-shufflev2/sd-dkd"] == 78.05
    assert top1["cifar100/vgg13-vgg8/luminet"] == 74.94
    assert top1["imagenet/resnet34-resnet18/dkd"] == 71.70
    assert top1["imagenet/resnet50-mobilenetv1/sd-dkd"] == 73.08
    assert top1["cifar100/resnet32x4-shufflev1/dkd"] is None  # no number given: none invented
    assert top1["quickstart"] is None
    assert all(top1[name] is None for name in FMNIST_RECIPES)


def test_luminet_per_pair_configs():
    expected = {"resnet32x4-resnet8x4": (33, 4, 2, 0.05), "vgg13-vgg8": (70, 8, 1, 0.05),
                "wrn_40_2-shufflev1": (35, 4, 1, 0.01), "vgg13-mobilenetv2": (70, 8, 2, 0.01),
                "resnet50-mobilenetv2": (70, 8, 2, 0.01), "resnet56-resnet20": (31, 4, 2, 0.05)}  # fmt: skip
    for pair, values in expected.items():
        recipe = validate_recipe(read_yaml(ROOT / "cifar100" / pair / "luminet.yaml"))
        _, config = resolve_method("luminet", recipe.method_options())
        assert (config.alpha, config.temperature, config.w_ce, recipe.optim.lr) == values


def test_imagenet_recipes_use_the_imagenet_protocol():
    files = [p for p in sorted((ROOT / "imagenet").rglob("*.yaml")) if p.stem in LOGIT_METHODS]
    assert {p.parent.name for p in files} == {"resnet34-resnet18", "resnet50-mobilenetv1"}
    assert len(files) == 2 * len(LOGIT_METHODS)
    for path in files:
        recipe = validate_recipe(read_yaml(path))
        assert recipe.data.source == "imagefolder:/path/to/imagenet"
        assert (recipe.train.epochs, recipe.train.batch_size, recipe.optim.lr) == (100, 512, 0.2)
        assert recipe.schedule.milestones == [30, 60, 90] and recipe.optim.weight_decay == 1e-4
        assert recipe.method.model_dump().get("temperature") in (1, 0.7)
    mobilenet = validate_recipe(read_yaml(ROOT / "imagenet" / "resnet50-mobilenetv1" / "dkd.yaml"))
    assert (mobilenet.student.arch, mobilenet.method.model_dump()["beta"]) == ("mobilenetv1_100", 2)


def test_fashion_mnist_recipes_share_one_budget():
    for name in FMNIST_RECIPES:
        recipe = validate_recipe(read_yaml(resolve_recipe_path(name)))
        assert recipe.data.source == "fashion-mnist" and recipe.data.train_limit == 5000
        assert (recipe.train.epochs, recipe.train.batch_size, recipe.optim.lr) == (10, 64, 0.002)
        assert (recipe.optim.name, recipe.schedule.name, recipe.data.augment) == ("adamw", "onecycle", "none")
        assert (recipe.teacher.arch, recipe.teacher.weights, recipe.student.arch) == (
            "cifar_resnet20", "runs/fmnist/teacher", "cifar_resnet8",
        )  # fmt: skip
        _, config = resolve_method(recipe.method.name, recipe.method_options())
        assert getattr(config, "warmup", 0) in (0, 2)


def test_resolve_recipe_path(tmp_path, monkeypatch):
    monkeypatch.delenv(RECIPES_ENV, raising=False)
    target = ROOT / "cifar100" / "resnet32x4-resnet8x4" / "dkd.yaml"
    assert resolve_recipe_path("cifar100/resnet32x4-resnet8x4/dkd") == target
    assert resolve_recipe_path("cifar100/resnet32x4-resnet8x4/dkd.yaml") == target
    assert resolve_recipe_path(target) == target
    own = tmp_path / "mine.yaml"
    own.write_text("student: {arch: cifar_resnet8}\n")
    assert resolve_recipe_path(str(own)) == own
    with pytest.raises(UserError, match=r"No recipe file or shipped recipe named 'quickstrat'.*'quickstart'"):
        resolve_recipe_path("quickstrat")
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "x.yaml").write_text("student: {arch: cifar_resnet8}\n")
    monkeypatch.setenv(RECIPES_ENV, str(tmp_path))
    assert resolve_recipe_path("lab/x") == tmp_path / "lab" / "x.yaml"
    monkeypatch.setenv(RECIPES_ENV, str(tmp_path / "missing"))
    with pytest.raises(UserError, match=RECIPES_ENV):
        resolve_recipe_path("lab/x")


def test_cli_recipes_list(runner, wide_console):
    result = runner.invoke(app, ["recipes", "list"])
    assert result.exit_code == 0, result.output
    for text in ("cifar100/resnet32x4-resnet8x4/dkd", "resnet32x4 -> resnet8x4", "76.32", "Zhao et al.",
                 "imagenet/resnet50-mobilenetv1/luminet", "fashion-mnist/sd-dkd", "quickstart"):  # fmt: skip
        assert text in result.output
    filtered = runner.invoke(app, ["recipes", "list", "luminet"])
    assert filtered.exit_code == 0
    assert "vgg13-vgg8/luminet" in filtered.output and "vgg13-vgg8/dkd" not in filtered.output


def test_cli_recipes_show(runner):
    result = runner.invoke(app, ["recipes", "show", "cifar100/vgg13-vgg8/sd-dkd"])
    assert result.exit_code == 0, result.output
    assert result.output == (ROOT / "cifar100" / "vgg13-vgg8" / "sd-dkd.yaml").read_text()
    missing = runner.invoke(app, ["recipes", "show", "cifar100/vgg13-vgg8/sd-dk"])
    assert missing.exit_code == 2
    assert "cifar100/vgg13-vgg8/sd-dkd" in missing.output


def test_cli_recipes_methods(runner, wide_console):
    result = runner.invoke(app, ["recipes", "methods"])
    assert result.exit_code == 0, result.output
    for text in ("dkd", "nkd", "luminet", "sdd", "sd-kd", "sd-dkd", "sd-nkd", "alpha=31", "beta=8",
                 "alias: sdd with base=dkd", "w_sdd=0.9", "gamma=1.5"):  # fmt: skip
        assert text in result.output
