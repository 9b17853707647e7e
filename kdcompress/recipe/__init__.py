"""The Recipe: the one schema every command's flags, YAML files and ``--set`` overrides map onto.

A run is fully described by its resolved recipe (written to ``recipe.yaml`` in the run folder), so a
run can be repeated from that file alone. Precedence, lowest first: schema defaults, the ``--recipe``
file, command-line flags, ``--set key.path=value`` overrides.
"""

from kdcompress.recipe.build import (
    PRETRAINED,
    absolute_weights,
    apply_override,
    build_probe_recipe,
    build_recipe,
    command_flags,
    merge,
    path_or_keyword,
    read_yaml,
    validate_recipe,
)
from kdcompress.recipe.schema import (
    DataSpec,
    ExportFormat,
    ExportPrecision,
    ExportSpec,
    Int8Mode,
    MethodSpec,
    ModelInput,
    ModelSpec,
    OptimSpec,
    PaperSpec,
    ProbeRecipe,
    ProbeSpec,
    Recipe,
    ScheduleSpec,
    TeacherSpec,
    TrainSpec,
)

__all__ = [
    "PRETRAINED",
    "DataSpec",
    "ExportFormat",
    "ExportPrecision",
    "ExportSpec",
    "Int8Mode",
    "MethodSpec",
    "ModelInput",
    "ModelSpec",
    "OptimSpec",
    "PaperSpec",
    "ProbeRecipe",
    "ProbeSpec",
    "Recipe",
    "ScheduleSpec",
    "TeacherSpec",
    "TrainSpec",
    "absolute_weights",
    "apply_override",
    "build_probe_recipe",
    "build_recipe",
    "command_flags",
    "merge",
    "path_or_keyword",
    "read_yaml",
    "validate_recipe",
]
