"""The shipped recipes: every file validates, CIFAR-100 recipes follow the papers' protocol and name zoo
models, names resolve to files, and `kdcompress recipes list | show | methods` print them."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import timm
import torch
from rich.console import Console

from kdcompress.cli import app
from kdcompress.errors import UserError
from kdcompress.methods import LogitConfig, StepProgress, method_info, resolve_method
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
IMAGENET = sorted((ROOT / "imagenet").rglob("*.yaml"))
PAPER_RECIPES = CIFAR + IMAGENET  # one folder per teacher-student pair, one file per method
FMNIST_RECIPES = [f"fashion-mnist/{m}" for m in ("ce", "kd", "dkd", "nkd", "sd-kd", "sd-dkd", "luminet")]
LS_SUFFIX = "-ls"  # <method>-ls.yaml: that method with logit standardisation

# published names of the CRD / mdistiller teacher checkpoints
PUBLISHED = {"resnet32x4": "resnet32x4", "wrn_40_2": "wrn_40_2", "resnet56": "resnet56", "vgg13": "vgg13",
             "resnet50": "ResNet50"}  # fmt: skip


def _rid(path: Path) -> str:
    return path.relative_to(ROOT).with_suffix("").as_posix()


def _load(path: Path):
    recipe = validate_recipe(read_yaml(path))
    cls, config = resolve_method(recipe.method.name, recipe.method_options())
    return recipe, cls, config


def _family(arch: str) -> str:
    """The architecture family of a zoo name: resnet32x4 -> resnet, wrn_40_2 -> wrn, mobilenetv2 ->
    mobilenetv."""
    return re.match(r"[a-z]+", arch).group()


@functools.cache
def _raw(path: Path) -> dict:
    """A recipe file's YAML, parsed once per session (callers only read it)."""
    return read_yaml(path)


def _logit(path: Path) -> bool:
    return method_info(_raw(path)["method"]["name"]).kind == "logit"


CIFAR_LOGIT = [p for p in CIFAR if _logit(p)]


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables wide enough that names are not wrapped in the captured output."""
    monkeypatch.setattr("kdcompress.cli.recipes.console", Console(width=300))


def test_the_index_finds_the_checkout_recipes(monkeypatch):
    monkeypatch.delenv(RECIPES_ENV, raising=False)
    assert recipes_root().resolve() == ROOT
    assert recipe_files() == sorted(ALL, key=lambda p: p.relative_to(ROOT).with_suffix("").as_posix())
    assert {e.path for e in list_recipes()} == set(ALL)


@pytest.mark.parametrize("path", ALL, ids=_rid)
def test_every_recipe_validates(path):
    recipe, method_cls, config = _load(path)
    if method_cls.needs_teacher:
        assert recipe.teacher is not None and recipe.teacher.arch
    for spec in (recipe.student, recipe.teacher):
        if spec is not None:
            assert timm.is_model(spec.arch), spec.arch
    if recipe.paper is not None and recipe.paper.top1 is not None:
        assert recipe.paper.source, "a paper number names its source"
    if method_cls.name == "sdd" and path.is_relative_to(ROOT / "cifar100"):
        assert recipe.train.grad_clip == 40
    # what a run records (the resolved options) validates again to the same method (what --resume reads)
    recorded = config.model_dump(mode="json")
    assert resolve_method(method_cls.name, recorded)[1].model_dump(mode="json") == recorded


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=_rid)
def test_paper_recipe_file_names_say_what_they_run(path):
    """``<pair>/<method>.yaml`` runs that method (an alias counts as its own name), and
    ``<method>-ls.yaml`` the same method with logit standardisation; nothing else standardises."""
    recipe, method_cls, config = _load(path)
    standardized = path.stem.endswith(LS_SUFFIX)
    assert recipe.method.name == path.stem.removesuffix(LS_SUFFIX)
    assert getattr(config, "standardize_logits", False) == standardized
    if standardized:
        assert issubclass(method_cls.Config, LogitConfig)
        assert (path.parent / f"{recipe.method.name}.yaml").is_file(), (
            "an LS recipe sits beside the plain one"
        )
    if recipe.paper is not None:
        assert recipe.paper.dataset == path.relative_to(ROOT).parts[0]


def test_cifar100_recipes_follow_the_protocol():
    assert CIFAR_LOGIT, "the CIFAR-100 recipes run logit methods"
    pairs = {p.parent.name for p in CIFAR}
    assert all((ROOT / "cifar100" / pair / "kd.yaml").is_file() for pair in pairs), "KD, the baseline"
    for path in CIFAR_LOGIT:
        pair = path.parent.name
        recipe, _, config = _load(path)
        teacher, student = pair.split("-")
        assert recipe.teacher.arch == f"cifar_{teacher}" and recipe.student.arch == f"cifar_{student}"
        assert (
            recipe.teacher.weights
            == f"/path/to/cifar_teachers/{PUBLISHED[teacher]}_vanilla/ckpt_epoch_240.pth"
        )
        assert recipe.data.source == "cifar100:/path/to/cifar-100-python"
        assert path.read_text().startswith("#") and "--set" in path.read_text().split("teacher:")[0]
        assert f"{_rid(path)}.yaml" in path.read_text().split("teacher:")[0], "the example names this file"
        assert (recipe.train.epochs, recipe.train.batch_size) == (240, 64)
        assert recipe.schedule.name == "step" and recipe.schedule.milestones == [150, 180, 210]
        assert recipe.optim.weight_decay == 5e-4 and recipe.optim.momentum == 0.9
        small = student.startswith(("shufflev", "mobilenet"))
        if recipe.method.name != "luminet" or small:
            assert recipe.optim.lr == (0.01 if small else 0.05), path
        if recipe.method.name.startswith("sd-"):
            similar = _family(teacher) == _family(student)
            assert config.scales == ([1, 2] if similar else [1, 2, 4]), path


def test_sd_dkd_uses_the_dkd_beta_of_its_pair():
    for path in (ROOT / "cifar100").glob("*/sd-dkd.yaml"):
        _, _, sd = _load(path)
        _, _, plain = _load(path.with_name("dkd.yaml"))
        assert (sd.alpha, sd.beta, sd.temperature) == (plain.alpha, plain.beta, plain.temperature), path


def test_ls_recipes_only_change_the_method():
    """An LS recipe trains the same pair under the same protocol as its plain counterpart; the method
    section (and the paper's number) is all that differs, so the two runs compare the option alone."""
    ls = sorted(ROOT.rglob(f"*{LS_SUFFIX}.yaml"))
    assert ls
    for path in ls:
        with_ls = read_yaml(path)
        plain = read_yaml(path.with_name(path.name.replace(LS_SUFFIX, "")))
        for section in ("teacher", "student", "data", "optim", "schedule", "train"):
            assert with_ls.get(section) == plain.get(section), (path, section)
        assert with_ls["method"]["name"] == plain["method"]["name"]


def test_luminet_recipes_say_when_they_use_the_defaults():
    defaults = resolve_method("luminet", {})[1]
    for path in sorted((ROOT / "cifar100").glob("*/luminet.yaml")):
        _, _, config = _load(path)
        uses_defaults = "LumiNet defaults" in path.read_text()
        assert (config == defaults) == uses_defaults, path


def test_cifar100_architectures_build():
    archs = set()
    for path in CIFAR:
        recipe = validate_recipe(read_yaml(path))
        archs |= {recipe.teacher.arch, recipe.student.arch}
    for arch in sorted(archs):
        assert arch.startswith("cifar_")
        model = timm.create_model(arch, num_classes=100)
        assert model.get_classifier().out_features == 100


def test_every_shipped_logit_method_setting_trains_a_step():
    """Each distinct method section of the shipped recipes builds on tiny 100-class zoo models and gives
    finite weighted terms, with CE among them, and gradients for the student."""
    settings = {}
    for path in ALL:
        if _logit(path):
            recipe = validate_recipe(_raw(path))
            options = recipe.method_options()
            settings.setdefault((recipe.method.name, repr(sorted(options.items()))), options)
    assert {name for name, _ in settings} >= {"kd", "dkd", "dist"}
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 99])
    torch.manual_seed(0)
    student = timm.create_model("cifar_resnet8", num_classes=100)
    teacher = timm.create_model("cifar_resnet8", num_classes=100)
    for (name, _), options in sorted(settings.items()):
        cls, config = resolve_method(name, options)
        method = cls.build(config, student, teacher, images)
        method.train()
        method.zero_grad()
        logits, terms = method(images, labels, StepProgress(30, 0, 10), method.teacher_outputs(images))
        assert logits.shape == (4, 100) and "ce" in terms, name
        total = sum(terms.values())
        assert torch.isfinite(total), (name, options)
        total.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in student.parameters())


def test_recipes_without_a_paper_number_invent_none():
    """A number is shipped only where a paper reports that pair (the docs list them); elsewhere the
    recipe runs the method's settings and the report compares with nothing."""
    top1 = {e.name: e.paper_top1 for e in list_recipes()}
    assert top1["cifar100/resnet32x4-shufflev1/dkd"] is None
    assert top1["quickstart"] is None
    assert all(top1[name] is None for name in FMNIST_RECIPES)


def test_recipes_added_for_a_paper_carry_its_number():
    """Every LS and DIST recipe exists because a paper reports that pair: its number and source are there."""
    for entry in list_recipes():
        stem = entry.path.stem
        if stem.endswith(LS_SUFFIX) or entry.method == "dist":
            assert entry.paper_top1 is not None and 50 < entry.paper_top1 < 100, entry.name
            paper = "Logit Standardization" if stem.endswith(LS_SUFFIX) else "Stronger Teacher"
            assert paper in entry.paper_source, entry.name


def test_imagenet_recipes_use_the_imagenet_protocol():
    files = [p for p in IMAGENET if _logit(p)]
    assert {p.parent.name for p in files} == {p.parent.name for p in IMAGENET}
    for path in files:
        recipe, _, config = _load(path)
        assert recipe.data.source == "imagefolder:/path/to/imagenet"
        assert (recipe.train.epochs, recipe.train.batch_size, recipe.optim.lr) == (100, 512, 0.2)
        assert recipe.schedule.milestones == [30, 60, 90] and recipe.optim.weight_decay == 1e-4
        assert config.temperature <= 2, "ImageNet recipes never inherit CIFAR's temperature 4"
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
                 "imagenet/resnet50-mobilenetv1/luminet", "fashion-mnist/sd-dkd", "quickstart",
                 "cifar100/resnet32x4-resnet8x4/kd-ls", "imagenet/resnet34-resnet18/dist"):  # fmt: skip
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
                 "alias: sdd with base=dkd", "w_sdd=0.9", "gamma=1.5", "dist", "w_dist=1",
                 "Stronger Teacher", "standardize_logits"):  # fmt: skip
        assert text in result.output
