"""A method from another package: declared as an entry point, found by the registry, listed with its
origin, trained by ``distill`` and run by ``compare``, and a broken plug-in does not break the others.

The plug-in is a real distribution on ``sys.path`` (a module plus a ``.dist-info`` folder with its
``entry_points.txt``, what ``pip install`` would leave behind). The registry discovers methods once per
process, so each check runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PLUGIN = '''
"""A tiny distillation method from outside kdcompress: KD with the teacher's logits halved."""

import torch.nn.functional as F
from pydantic import Field

from kdcompress import losses
from kdcompress.methods import LogitConfig, LogitMethod


class HalfKDConfig(LogitConfig):
    temperature: float = Field(default=4.0, gt=0)


class HalfKD(LogitMethod):
    name = "halfkd"
    summary = "KD towards half the teacher's logits (a plug-in test)"
    paper = "nobody, 2026"
    Config = HalfKDConfig

    def forward(self, images, labels, progress, teacher_out):
        logits = self.student(images)
        student, teacher = self.distilled_pair(logits, 0.5 * teacher_out)
        return logits, {
            "ce": F.cross_entropy(logits, labels),
            "halfkd": losses.kd(student, teacher, self.config.temperature),
        }


class Impostor(HalfKD):
    name = "kd"
'''


def install_plugin(site: Path, entry_points: str) -> None:
    """What pip leaves behind for a distribution ``kdtest-plugin`` with these entry points."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "kdtest_plugin.py").write_text(PLUGIN)
    info = site / "kdtest_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdtest-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def in_fresh_python(site: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)


def test_a_plugin_method_is_listed_trained_and_compared(tmp_path, teacher_run):
    site = tmp_path / "site"
    install_plugin(site, "[kdcompress.methods]\nhalfkd = kdtest_plugin:HalfKD\n")
    script = textwrap.dedent(
        """
        import json, sys
        from typer.testing import CliRunner
        from kdcompress.cli import app
        from kdcompress.methods import all_methods, method_info

        info = method_info("halfkd")
        listing = CliRunner().invoke(app, ["recipes", "methods"], env={"COLUMNS": "400"})
        tiny = ["--data", "digits", "--epochs", "1", "--device", "cpu", "--batch-size", "64",
                "--set", "data.train_limit=128", "--set", "data.val_limit=64"]
        teacher = ["--teacher", "cifar_resnet14", "--teacher-weights", sys.argv[1]]
        run = CliRunner().invoke(app, ["distill", *teacher, "--student", "cifar_resnet8", "--method",
                                       "halfkd", *tiny, "--out", sys.argv[2] + "/run", "--quiet"])
        compared = CliRunner().invoke(app, ["compare", *teacher, "--student", "cifar_resnet8",
                                            "--methods", "ce,halfkd", *tiny, "--out", sys.argv[2] + "/cmp"])
        print(json.dumps({
            "origin": info.origin, "kind": info.kind, "in_all": "halfkd" in all_methods(),
            "listing": listing.output, "run": [run.exit_code, run.output],
            "compare": [compared.exit_code, compared.output],
        }))
        """
    )
    done = in_fresh_python(site, script, str(teacher_run), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["origin"] == "plug-in kdtest-plugin" and result["kind"] == "logit" and result["in_all"]
    assert "halfkd" in result["listing"] and "plug-in kdtest-plugin" in result["listing"]
    assert result["run"][0] == 0, result["run"][1]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "loss_halfkd" in rows[0]
    assert result["compare"][0] == 0, result["compare"][1]
    board = json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())
    assert {row["method"] for row in board["rows"]} == {"ce", "halfkd"}


def test_a_broken_or_clashing_plugin_is_one_warning_and_the_rest_works(tmp_path):
    site = tmp_path / "site"
    points = "[kdcompress.methods]\nbroken = kdtest_plugin:NoSuchClass\nimpostor = kdtest_plugin:Impostor\n"
    install_plugin(site, points)
    script = "from kdcompress.methods import method_info; print(method_info('kd').cls.__module__)"
    done = in_fresh_python(site, script)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "kdcompress.methods.kd"  # the built-in kd, not the impostor
    said = " ".join(done.stderr.split())
    assert "The method plug-in 'broken' (kdtest_plugin:NoSuchClass) could not be loaded" in said
    assert "registers a method named 'kd', which kdcompress already provides" in said
