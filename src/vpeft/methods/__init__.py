"""PEFT methods: a registry, a base API and one module per method."""

from .base import (
    AppliedMethod,
    MethodConfig,
    MethodError,
    MethodLayer,
    PeftMethod,
    apply_method,
    count_parameters,
    method_layers,
)
from .registry import available_methods, build_method, get_method_class, register_method

__all__ = [
    "AppliedMethod",
    "MethodConfig",
    "MethodError",
    "MethodLayer",
    "PeftMethod",
    "apply_method",
    "available_methods",
    "build_method",
    "count_parameters",
    "get_method_class",
    "method_layers",
    "register_method",
]
