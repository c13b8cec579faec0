"""PEFT methods: a registry, a base API and one module per method."""

from .base import (
    AppliedMethod,
    MethodConfig,
    MethodError,
    MethodLayer,
    ModuleRef,
    PeftMethod,
    Provenance,
    SelectiveMethod,
    apply_method,
    count_parameters,
    match_modules,
    method_layers,
    replace_module,
    transformer_blocks,
    wrap_modules,
)
from .registry import available_methods, build_method, get_method_class, register_method

__all__ = [
    "AppliedMethod",
    "MethodConfig",
    "MethodError",
    "MethodLayer",
    "ModuleRef",
    "PeftMethod",
    "Provenance",
    "SelectiveMethod",
    "apply_method",
    "available_methods",
    "build_method",
    "count_parameters",
    "get_method_class",
    "match_modules",
    "method_layers",
    "register_method",
    "replace_module",
    "transformer_blocks",
    "wrap_modules",
]
