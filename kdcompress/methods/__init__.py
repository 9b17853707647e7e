"""Distillation methods, one small module each, registered by name."""

from kdcompress.methods import blockkd, ce, dkd, featkd, fitnet, kd, luminet, nkd, sdd  # noqa: F401  (registration side effects)
from kdcompress.methods.base import Method, MethodConfig, Progress, freeze, warmup_factor
from kdcompress.methods.registry import ALIASES, METHODS, register, register_alias, resolve_method

__all__ = [
    "ALIASES",
    "METHODS",
    "Method",
    "MethodConfig",
    "Progress",
    "freeze",
    "register",
    "register_alias",
    "resolve_method",
    "warmup_factor",
]
