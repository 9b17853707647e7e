"""Distillation methods, one small module each, found and registered by :mod:`.registry`.

Nothing here lists the methods: each module registers its own class (and aliases), and the registry
imports every module of this package, then the ``kdcompress.methods`` entry points of installed
plug-ins, the first time it is asked.
"""

from kdcompress.methods.base import Method, MethodConfig, StepProgress, freeze, teacher_pass, warmup_factor
from kdcompress.methods.logit import LogitConfig, LogitMethod
from kdcompress.methods.registry import (
    MethodInfo,
    all_methods,
    canonical_options,
    entries,
    method_info,
    register,
    register_alias,
    resolve_method,
)

__all__ = [
    "LogitConfig",
    "LogitMethod",
    "Method",
    "MethodConfig",
    "MethodInfo",
    "StepProgress",
    "all_methods",
    "canonical_options",
    "entries",
    "freeze",
    "method_info",
    "register",
    "register_alias",
    "resolve_method",
    "teacher_pass",
    "warmup_factor",
]
