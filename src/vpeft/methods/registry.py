"""The method registry: the single source of truth for which methods exist."""

from __future__ import annotations

import dataclasses
import re

from .base import CATEGORIES, MethodConfig, MethodError, PeftMethod, Provenance

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_METHODS: dict[str, type[PeftMethod]] = {}


#: What every method class must set (README "Add a method"), and what each attribute is.
REQUIRED = {
    "name": "the method's name in configs and targets (lowercase words joined by hyphens)",
    "config_cls": "the MethodConfig dataclass holding its hyper-parameters and their defaults",
    "category": f"the report's family, one of {', '.join(CATEGORIES)}",
    "paper": "the reference and year",
    "provenance": "how it was verified: official_code(...), from_paper(...) or variant(...)",
}


def register_method(cls: type[PeftMethod]) -> type[PeftMethod]:
    """Class decorator: validate and register a method. Called once per method module."""
    name = getattr(cls, "name", None)
    where = f"method class {cls.__name__} ({cls.__module__})"
    missing = [attr for attr in REQUIRED if not getattr(cls, attr, None)]
    if missing:
        raise MethodError(f"{where} does not set {', '.join(f'`{attr}`' for attr in missing)}: "
                          + "; ".join(f"{attr} = {REQUIRED[attr]}" for attr in missing))
    if not isinstance(name, str) or not _NAME.match(name):
        raise MethodError(f"{where}: method name {name!r} must be lowercase words joined by hyphens")
    if name in _METHODS and _METHODS[name] is not cls:
        raise MethodError(f"method name '{name}' is already registered by {_METHODS[name].__module__}")
    if getattr(cls, "category", None) not in CATEGORIES:
        raise MethodError(f"method '{name}': category must be one of {CATEGORIES}")
    config_cls = getattr(cls, "config_cls", None)
    if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)
            and dataclasses.is_dataclass(config_cls)):
        raise MethodError(f"method '{name}': config_cls must be a MethodConfig dataclass")
    provenance = getattr(cls, "provenance", None)
    if not isinstance(provenance, Provenance):
        raise MethodError(f"method '{name}': set `provenance` (official_code / from_paper / variant) "
                          f"to say how the implementation was verified")
    if provenance.problems():
        raise MethodError(f"method '{name}': provenance: {'; '.join(provenance.problems())}")
    _METHODS[name] = cls
    return cls


def _ensure_loaded() -> None:
    from . import _discover  # noqa: F401  (imports every method module once)


def available_methods() -> list[str]:
    _ensure_loaded()
    return sorted(_METHODS)


def in_table_order(names) -> list[str]:
    """Baselines first, then by category (partial, addition, reparameterization, ...), then name."""
    return sorted(names, key=lambda n: (CATEGORIES.index(get_method_class(n).category), n))


def get_method_class(name: str) -> type[PeftMethod]:
    _ensure_loaded()
    if name not in _METHODS:
        from vpeft.config import did_you_mean

        raise MethodError(f"unknown method '{name}'{did_you_mean(name, _METHODS)}; "
                          f"valid methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def build_method(name: str, hparams: dict | None = None) -> PeftMethod:
    """Instantiate a method from its name and a dict of hyper-parameters (validated by its config)."""
    cls = get_method_class(name)
    return cls(cls.config_cls.from_dict(hparams, method=name))


def method_report_info(name: str) -> dict:
    """What the report shows beside a method's row: family, mergeability, reference and provenance."""
    cls = get_method_class(name)
    return {"family": cls.category, "mergeable": cls.mergeable, "paper": cls.paper,
            "verified": cls.provenance.kind, "verified_detail": cls.provenance.summary()}
