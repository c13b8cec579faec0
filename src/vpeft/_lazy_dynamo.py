"""torch._dynamo loaded when something compiles, not by every training job (import this module
before timm or torchvision; it then imports timm).

torch._dynamo (with sympy, triton and inductor's config) costs about 2 s of a short job's start on a
CPU, and an eager run never uses it. Eager code loads it anyway, for markers that mean nothing
until something compiles:

* torchvision (which timm imports) binds `torch._dynamo.utils.is_compile_supported` at import time
  (`torchvision.ops.roi_align`) and calls it only when roi_align runs;
* `torch.compiler.disable` (timm decorates NaFlexViT methods with it) and torch's own
  `torch._disable_dynamo` (every optimizer's `add_param_group`, `zero_grad`, ...) call
  `torch._dynamo.disable` to exempt a function from compilation;
* every `torch.optim` step calls `torch._dynamo.graph_break()`, a no-op outside compilation.

So `torch._dynamo` starts as a stand-in module with just those: `graph_break` (the same no-op),
`disable` (returns a wrapper that calls the function itself while the real torch._dynamo is not
loaded, since then nothing is compiling, and the real `disable`'s wrapper once it is) and
`utils.is_compile_supported` (calls the real one). Anything else asked of it (any other attribute,
any submodule import: `torch.compile`, `torch._dynamo.config`, ...) loads the real package, which
then replaces the stand-in in `sys.modules` and on `torch`; the stand-ins forward to it. Nothing a
run computes changes (tests: the import set of a job, torch.compile, roi_align, optimizer steps).
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types
from pathlib import Path

log = logging.getLogger(__name__)

_DYNAMO, _UTILS = "torch._dynamo", "torch._dynamo.utils"


def _real():
    """The real torch._dynamo (loaded now if the stand-in is still in place)."""
    stand_in = sys.modules.get(_DYNAMO)
    if isinstance(stand_in, _StandIn):
        _uninstall()
    return importlib.import_module(_DYNAMO)


class _StandIn(types.ModuleType):
    """A module whose missing attributes come from the real one (loaded on the first such access)."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        real = _real()
        return getattr(real if self.__name__ == _DYNAMO else importlib.import_module(self.__name__), name)


def graph_break(msg: str = "") -> None:
    """torch._dynamo.graph_break outside compilation: nothing (the real one only marks a graph)."""


def is_compile_supported(device_type):
    return _real().utils.is_compile_supported(device_type)


def _loaded() -> bool:
    return not isinstance(sys.modules.get(_DYNAMO), _StandIn)


def disable(fn=None, recursive=True, **options):
    """torch._dynamo.disable, decided at each call: the function itself while nothing can compile
    (the real torch._dynamo not loaded), the real `disable`'s wrapper from then on."""
    if fn is None:
        return functools.partial(disable, recursive=recursive, **options)
    if isinstance(fn, type):  # a class must stay a class: decorate it now
        return _real().disable(fn, recursive, **options)
    disabled = None

    def call(*args, **kwargs):
        nonlocal disabled
        if disabled is None:
            if not _loaded():
                return fn(*args, **kwargs)
            disabled = _real().disable(fn, recursive, **options)
        return disabled(*args, **kwargs)

    return functools.wraps(fn)(call) if options.get("wrapping", True) else call


class _Existing(importlib.abc.Loader):
    """Hands the import system a submodule that loading the real package already created."""

    def create_module(self, spec):
        return sys.modules[spec.name]

    def exec_module(self, module) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    """Any import of a torch._dynamo submodule loads the real package first."""

    def find_spec(self, name, path=None, target=None):
        if not name.startswith(_DYNAMO + "."):
            return None
        _real()
        if name in sys.modules:
            return importlib.machinery.ModuleSpec(name, _Existing())
        return None  # the ordinary finders find it in the real package


_FINDER = _Finder()


def _install() -> bool:
    import torch

    if _DYNAMO in sys.modules:
        return False
    spec = importlib.util.find_spec(_DYNAMO)
    if spec is None or not spec.submodule_search_locations:
        return False
    package, utils = _StandIn(_DYNAMO), _StandIn(_UTILS)
    package.__spec__, package.__path__ = spec, list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.graph_break, package.disable, package.utils = graph_break, disable, utils
    utils.__spec__ = importlib.machinery.ModuleSpec(_UTILS, None, origin=str(Path(spec.origin).with_name("utils.py")))
    utils.is_compile_supported = is_compile_supported
    sys.modules[_DYNAMO], sys.modules[_UTILS] = package, utils
    sys.meta_path.insert(0, _FINDER)
    return True


def _uninstall() -> None:
    import torch

    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    for name in (_UTILS, _DYNAMO):
        if isinstance(sys.modules.get(name), _StandIn):
            del sys.modules[name]
    if isinstance(torch.__dict__.get("_dynamo"), _StandIn):
        del torch._dynamo  # torch's module __getattr__ imports the real one on first use


def _set_up() -> None:
    if "timm" in sys.modules or "torchvision" in sys.modules:
        return  # too late to help; everything stays as it is
    import torch  # noqa: F401  (first: a failed attempt below must never unload torch)

    installed = False
    try:
        installed = _install()
        import timm  # noqa: F401
    except Exception as err:  # noqa: BLE001 - then import the ordinary way, which raises for real
        log.debug("lazy torch._dynamo did not work here (%s); importing timm plainly", err)
        if installed:
            _uninstall()
        for name in [n for n in sys.modules if n.split(".")[0] in ("timm", "torchvision")]:
            sys.modules.pop(name, None)
        import timm  # noqa: F401


_set_up()
