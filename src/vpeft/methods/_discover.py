"""Import every method module in this package so each one's `@register_method` runs.

Adding a method is adding a module here: nothing else has to be edited.
"""

import importlib
import pkgutil
from pathlib import Path

_PACKAGE = __name__.rpartition(".")[0]
_INFRASTRUCTURE = {"base", "registry"}

for _info in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if not _info.name.startswith("_") and _info.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{_PACKAGE}.{_info.name}")
