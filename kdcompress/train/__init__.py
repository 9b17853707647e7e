"""Training runs: the engine (``train`` and ``distill``), schedules, the teacher cache and the report."""

from kdcompress.train.engine import run
from kdcompress.train.prepare import prepare
from kdcompress.train.result import RunResult

__all__ = ["RunResult", "prepare", "run"]
