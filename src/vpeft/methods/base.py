"""The method API every PEFT method implements.

A method is a `PeftMethod` subclass with a typed `MethodConfig`. `apply_method` injects it into an
*unmodified* timm model by module names, freezes everything the method does not own, and keeps the
classifier head trainable. Layers a method adds derive from `MethodLayer`; wrappers keep the frozen
original as `base_layer` and never edit it except inside an explicit `merge()`. A layer holds modules it
only reads as `ModuleRef`s and hooks other modules through `MethodLayer.add_forward_hook` /
`add_forward_pre_hook`, so a deep copy of an applied model computes and trains with its own tensors.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.utils.hooks
from torch import nn

CATEGORIES = ("baseline", "partial", "addition", "reparameterization", "side", "unified", "peft")


class MethodError(ValueError):
    """A method cannot be configured or applied as asked."""


@dataclass
class MethodConfig:
    """Base of all method configs. Subclasses are dataclasses whose fields are hyper-parameters,
    named in the papers' terms (`rank`, `alpha`, `bottleneck`, `num_tokens`), with defaults and a
    `help` entry in the field metadata."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `MethodError` on inconsistent values. Override in subclasses."""

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, *, method: str = "") -> MethodConfig:
        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            valid = ", ".join(sorted(fields)) or "(none)"
            raise MethodError(
                f"unknown hyper-parameter(s) {unknown} for method '{method or cls.__name__}'; valid: {valid}"
            )
        coerced = {}
        for key, value in values.items():
            coerced[key] = _coerce(value, fields[key].type, f"{method or cls.__name__}.{key}")
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Accept YAML/CLI strings for simple scalar fields; reject values of the wrong kind clearly."""
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        if kind == "str":
            return str(value)
        if kind.startswith("tuple"):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return tuple(value)
    except (TypeError, ValueError):
        raise MethodError(f"{where}: expected {kind}, got {value!r}") from None
    return value


PROVENANCE_KINDS = ("official-code", "paper", "variant")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Provenance:
    """How a method's implementation was verified; one per method module, shown by `vpeft methods`,
    the README's method table and the report (which marks every row that is not an official-code port).

    kind: `official-code` (compared with the authors' code: `repo` owner/name, the 40-hex `commit`
        read, and the `files` compared against; or, for code that runs from an installed package
        rather than a port of it, the package's `version`, read at run time), `paper` (no official code compared: reconstructed from
        the paper; `sections` lists the sections / equations / tables the design rests on) or `variant`
        (the project's own reading of a method; `why` says why and what it departs from).
    notes: remaining known differences or choices, one line (optional for every kind).
    Build them with `official_code(...)`, `from_paper(...)` or `variant(...)`.
    """

    kind: str
    repo: str = ""
    commit: str = ""
    files: tuple[str, ...] = ()
    version: str = ""
    sections: tuple[str, ...] = ()
    why: str = ""
    notes: str = ""

    def problems(self) -> list[str]:
        """What is missing or malformed for this kind (empty when complete)."""
        if self.kind not in PROVENANCE_KINDS:
            return [f"kind must be one of {PROVENANCE_KINDS}, got {self.kind!r}"]
        out = []
        if self.kind == "official-code":
            if not _REPO.match(self.repo):
                out.append(f"official-code needs repo 'owner/name', got {self.repo!r}")
            if not _COMMIT.match(self.commit) and not (self.version and not self.commit):
                out.append(f"official-code needs the 40-hex commit compared against (or the installed "
                           f"package version that runs), got {self.commit!r}")
            if not self.files or not all(isinstance(f, str) and f.strip() for f in self.files):
                out.append("official-code needs the file(s) compared against")
        elif self.kind == "paper":
            if not self.sections or not all(isinstance(x, str) and x.strip() for x in self.sections):
                out.append("paper needs the sections / equations / tables used")
        elif not self.why.strip():
            out.append("variant needs `why`")
        return out

    def summary(self) -> str:
        """One line for tables: `official-code: owner/name@abcdef1 (file, ...)`, `paper: §3, Eq. 2`, ..."""
        if self.kind == "official-code":
            text = f"official-code: {self.repo}@{self.commit[:7] or self.version} ({', '.join(self.files)})"
        elif self.kind == "paper":
            text = f"paper: {'; '.join(self.sections)}"
        else:
            text = f"variant: {self.why}"
        return f"{text}. {self.notes}" if self.notes else text

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def official_code(repo: str, commit: str, *files: str, notes: str = "", version: str = "") -> Provenance:
    """`commit` is "" when `version` names the installed package whose code runs (not a port of it)."""
    return Provenance("official-code", repo=repo, commit=commit, files=tuple(files), notes=notes, version=version)


def from_paper(*sections: str, notes: str = "") -> Provenance:
    return Provenance("paper", sections=tuple(sections), notes=notes)


def variant(why: str, notes: str = "") -> Provenance:
    return Provenance("variant", why=why, notes=notes)


class ModuleRef:
    """A method layer's reference to a module that lives elsewhere in the model (a frozen backbone
    block, a sibling method layer), read through `ref.module`.

    Assigning a module as an attribute of an `nn.Module` registers it as a child: a frozen block would
    then count as the layer's own tensors (made trainable, saved and counted twice). `ModuleRef` is the
    one way to hold such a reference: `self._blocks = [ModuleRef(b) for b in model.blocks]`. The module
    must be registered somewhere in the model (that registration moves, saves and freezes it;
    `apply_method` checks it); `copy.deepcopy` of the model points the copy's reference at the copy's
    module. `MethodLayer` refuses lists, tuples and dicts of modules, which would be silent look-alikes.
    """

    __slots__ = ("module",)

    def __init__(self, module: nn.Module):
        if not isinstance(module, nn.Module):
            raise MethodError(f"ModuleRef holds an nn.Module, got {type(module).__name__}")
        self.module = module

    def __repr__(self) -> str:
        return f"ModuleRef({type(self.module).__name__})"


def _holds_module(value: Any) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return isinstance(value, (list, tuple, dict)) and any(isinstance(v, nn.Module) for v in items)


class MethodLayer(nn.Module):
    """Marker base for every module a method adds. Its own parameters are the method's trainable
    tensors; a wrapped frozen original, if any, lives in `self.base_layer` and stays frozen.

    Two rules keep a layer correct under `copy.deepcopy` of the model, `state_dict` and counting:
    * a module the layer only reads (a frozen block, a sibling layer) is held as a `ModuleRef`;
    * hooks on other modules are registered with `add_forward_hook` / `add_forward_pre_hook`, whose
      callback is a method of this layer (extra leading arguments allowed): `copy.deepcopy` rebinds a
      bound method to the copied layer, whereas a closure or lambda would keep acting on the original's
      tensors. `remove_hooks()` removes them all (also on a copy, where it removes the copy's).
    """

    def __init__(self) -> None:
        super().__init__()
        self.hook_handles: list[torch.utils.hooks.RemovableHandle] = []

    def __setattr__(self, name: str, value: Any) -> None:
        if _holds_module(value):
            raise MethodError(f"{type(self).__name__}.{name}: hold modules that live elsewhere in the model "
                              f"as ModuleRef(module) (a plain container hides them from deepcopy rules and "
                              f"checks), or register owned ones in an nn.ModuleList / nn.ModuleDict")
        super().__setattr__(name, value)

    def add_forward_pre_hook(self, module: nn.Module, method, *args) -> None:
        """`module.register_forward_pre_hook(method(*args, module, inputs))`, kept for `remove_hooks`."""
        self.hook_handles.append(module.register_forward_pre_hook(self._own_hook(method, args)))

    def add_forward_hook(self, module: nn.Module, method, *args) -> None:
        """`module.register_forward_hook(method(*args, module, inputs, output))`, kept for `remove_hooks`."""
        self.hook_handles.append(module.register_forward_hook(self._own_hook(method, args)))

    def _own_hook(self, method, args: tuple):
        if getattr(method, "__self__", None) is not self:
            raise MethodError(f"{type(self).__name__}: a hook must be a bound method of the layer itself "
                              f"(got {method!r}); copy.deepcopy rebinds methods to the copy, not closures")
        return functools.partial(method, *args) if args else method

    def remove_hooks(self) -> None:
        """Remove every hook this layer registered; the backbone then runs as without the method."""
        for handle in self.hook_handles:
            handle.remove()
        self.hook_handles = []

    def method_parameters(self):
        for name, param in self.named_parameters():
            if not name.startswith("base_layer."):
                yield name, param

    @torch.no_grad()
    def stash_base_parameters(self) -> None:
        """Keep exact copies of the base layer's tensors before a merge edits them in place, so that
        `restore_base_parameters` undoes the merge bit for bit (no float round trip)."""
        self._stashed = {n: p.detach().clone() for n, p in self.base_layer.named_parameters(recurse=False)}

    @torch.no_grad()
    def restore_base_parameters(self) -> None:
        for name, value in self.__dict__.pop("_stashed").items():
            getattr(self.base_layer, name).copy_(value)

    def merge(self) -> None:  # pragma: no cover - overridden by mergeable layers
        raise MethodError(f"{type(self).__name__} cannot be merged into the backbone")

    def unmerge(self) -> None:  # pragma: no cover
        raise MethodError(f"{type(self).__name__} cannot be unmerged")


class PeftMethod:
    """One PEFT method. Subclasses set the class attributes and implement `inject`."""

    name: ClassVar[str]
    category: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]
    mergeable: ClassVar[bool] = False
    paper: ClassVar[str] = ""
    #: how the implementation was verified (required; checked by `register_method`)
    provenance: ClassVar[Provenance]
    #: False for side-tuning: no trainable tensor sits upstream of the frozen blocks it reads, so the
    #: backward pass never runs through them (tests check that their outputs carry no graph).
    needs_backbone_grad: ClassVar[bool] = True
    #: True when `inject` needs a data-dependent selection (GPS's gradient mask, SCT's salient
    #: channels), computed once on the *training split* by `compute_selection` and cached by the
    #: workflow's `select_parameters` rule.
    needs_selection: ClassVar[bool] = False
    #: True when the workflow searches the method's hyper-parameters before the final run (NOAH:
    #: supernet training on train800, evolutionary search on val200, then retraining the subnet).
    needs_search: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise MethodError(f"{self.name} expects {self.config_cls.__name__}, got {type(self.config).__name__}")
        self.selection: dict[str, torch.Tensor] | None = None

    # -- to implement -------------------------------------------------------------------------
    def inject(self, model: nn.Module) -> list[str]:
        """Add the method's layers to `model` in place; return the names of the modules it acted on."""
        raise NotImplementedError

    def select_backbone_parameters(self, model: nn.Module) -> list[str]:
        """Names of *existing* backbone parameters the method trains (BitFit: biases). Default: none."""
        return []

    def frozen_prefix_blocks(self, model: nn.Module) -> int:
        """How many leading transformer blocks (in forward order) the method leaves untouched with no
        trainable tensor upstream: their activations carry no autograd history and can be cached.
        Side-tuning methods (`needs_backbone_grad = False`) leave all of them."""
        return 0 if self.needs_backbone_grad else len(transformer_blocks(model))

    def compute_selection(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                          num_classes: int) -> dict[str, torch.Tensor]:
        """Data-dependent stage of methods with `needs_selection`: look at the frozen, *unmodified*
        `model` (a timm model with a fresh head for `num_classes`) on `batches` of the training split
        (deterministic preprocessing) and return named tensors that `inject` reads from
        `self.selection`. Must not modify `model`."""
        raise MethodError(f"method '{self.name}' has no selection stage")

    def method_parameter_names(self, model: nn.Module) -> list[str]:
        """Full names of the tensors the method added (trained by `apply_method`). Default: the own
        parameters of every `MethodLayer`; a method whose layers come from another library says which."""
        return [f"{prefix}.{name}" if prefix else name
                for prefix, module in model.named_modules() if isinstance(module, MethodLayer)
                for name, _ in module.method_parameters()]

    def begin_training(self, model: nn.Module, total_steps: int, first_step: int = 0):
        """Called by the engine before the first optimiser step with the run's number of steps (and the
        step a resumed run starts at). Returns a callable the engine runs after every optimiser step
        (gradients still present), or None: the default, for methods without a step schedule."""
        return None

    # -- shared machinery ---------------------------------------------------------------------
    def merge(self, model: nn.Module) -> None:
        """Fold the method into the backbone weights so inference runs the plain architecture."""
        if not self.mergeable:
            raise MethodError(f"method '{self.name}' is not mergeable")
        for layer in method_layers(model):
            layer.merge()

    def unmerge(self, model: nn.Module) -> None:
        if not self.mergeable:
            raise MethodError(f"method '{self.name}' is not mergeable")
        for layer in method_layers(model):
            layer.unmerge()

    def merge_and_unload(self, model: nn.Module) -> nn.Module:
        """Merge, then replace every wrapper by its base layer: the result is a plain timm model."""
        self.merge(model)
        for parent, child_name, layer in list(_method_layer_slots(model)):
            if getattr(layer, "stays_after_merge", False):  # nothing frozen can absorb it (see the layer)
                continue
            base = getattr(layer, "base_layer", None)
            if base is None:
                raise MethodError(f"{type(layer).__name__} at {child_name} has no base layer to restore")
            setattr(parent, child_name, base)
        return model


class SelectiveMethod(PeftMethod):
    """A method that trains a subset of the backbone's own tensors (BitFit, LN-Tune, Partial-k):
    it adds no layers, so the trained model already is the plain architecture."""

    category = "partial"
    mergeable = True

    def candidate_parameters(self, model: nn.Module) -> list[str]:
        """Names of the backbone tensors this method trains (the head is filtered out afterwards)."""
        return []

    def select_backbone_parameters(self, model):
        head = classifier_parameter_names(model)
        return [n for n in self.candidate_parameters(model) if n not in head]

    def inject(self, model):
        return sorted({n.rpartition(".")[0] for n in self.select_backbone_parameters(model)})

    def merge(self, model):
        """Nothing to fold in: the selected tensors were edited in place."""

    def unmerge(self, model):
        """Nothing to unfold."""

    def merge_and_unload(self, model):
        return model


def transformer_blocks(model: nn.Module) -> list[str]:
    """Names of the transformer blocks in forward order: `blocks.N` in a timm ViT, `layers.S.blocks.N`
    across stages in a timm Swin."""
    return match_modules(model, r"(^|\.)blocks\.\d+$")


def leading_untouched_blocks(model: nn.Module) -> int:
    """Number of leading transformer blocks with no method layer in or before them.

    Relies on timm registering modules in forward order (true for ViT and Swin: patch_embed, blocks /
    stages, norm, head); a block that contains the first method layer is not counted."""
    blocks = transformer_blocks(model)
    layers = {id(m) for m in method_layers(model)}
    order = {}
    first = None
    for i, (name, module) in enumerate(model.named_modules()):
        order[name] = i
        if first is None and id(module) in layers:
            first = (i, name)
    if first is None:
        return len(blocks)
    count = 0
    for block in blocks:
        if order[block] < first[0] and not first[1].startswith(block + "."):
            count += 1
        else:
            break
    return count


def check_selection_fits(method: str, selection: dict, names: list[str]) -> None:
    """A cached selection must name exactly the modules the method acts on in this model."""
    unknown, missing = sorted(set(selection) - set(names)), sorted(set(names) - set(selection))
    if unknown or missing:
        raise MethodError(f"{method}: the selection does not fit this model (missing {missing[:3]}, "
                          f"unknown {unknown[:3]}); recompute it with compute_selection")


def check_references(model: nn.Module) -> None:
    """Every `ModuleRef` a method layer holds (directly or in a list, tuple or dict) points into
    `model`: a module registered nowhere would be left out of `.to()`, `state_dict` and freezing."""
    inside = {id(m) for m in model.modules()}
    for layer_name, layer in model.named_modules():
        if not isinstance(layer, MethodLayer):
            continue
        for name, value in vars(layer).items():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) \
                else (value,)
            for item in items:
                if isinstance(item, ModuleRef) and id(item.module) not in inside:
                    raise MethodError(f"{layer_name}.{name} refers to a {type(item.module).__name__} that is "
                                      f"not part of the model; register it in the model, or own it")


def method_layers(model: nn.Module) -> list[MethodLayer]:
    return [m for m in model.modules() if isinstance(m, MethodLayer)]


def _method_layer_slots(model: nn.Module):
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, MethodLayer):
                yield parent, child_name, child


def match_modules(model: nn.Module, pattern: str, kind: type[nn.Module] | tuple | None = None) -> list[str]:
    """Names of modules whose full name matches `pattern` (re.search) and, if given, of type `kind`."""
    regex = re.compile(pattern)
    return [
        name
        for name, module in model.named_modules()
        if name and regex.search(name) and (kind is None or isinstance(module, kind))
    ]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def wrap_modules(model: nn.Module, pattern: str, make_layer, *, kind=None, method: str = "") -> list[str]:
    """Replace every module matching `pattern` (and `kind`) by `make_layer(original)`; return the names.
    Matching nothing is an error: a silent no-op would train only the head under the method's name."""
    names = match_modules(model, pattern, kind)
    if not names:
        what = kind.__name__ if isinstance(kind, type) else "module"
        raise MethodError(f"{method}: no {what} of {type(model).__name__} matches target_modules={pattern!r}")
    for name in names:
        replace_module(model, name, make_layer(model.get_submodule(name)))
    return names


def classifier_parameter_names(model: nn.Module) -> set[str]:
    """Parameters of the classification head (timm's `get_classifier()`), by full name."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        return set()
    ids = {id(p) for p in head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@dataclass
class AppliedMethod:
    """The result of `apply_method`: the model (modified in place) and what the method did."""

    model: nn.Module
    method: PeftMethod
    matched: list[str]

    def parameter_counts(self) -> dict[str, int]:
        return count_parameters(self.model)

    def merge_and_unload(self) -> nn.Module:
        if self.method.mergeable:
            self.model = self.method.merge_and_unload(self.model)
        return self.model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters with and without the head, plus totals (shared tensors counted once)."""
    head_names = classifier_parameter_names(model)
    seen: set[int] = set()
    trainable = head = head_trainable = total = 0
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = param.numel()
        total += n
        if name in head_names:
            head += n
            head_trainable += n if param.requires_grad else 0
        elif param.requires_grad:
            trainable += n
    return {
        "trainable": trainable,
        "trainable_with_head": trainable + head_trainable,
        "head": head,
        "total": total,
    }


def apply_method(model: nn.Module, method: PeftMethod,
                 selection: dict[str, torch.Tensor] | None = None) -> AppliedMethod:
    """Inject `method` into `model`, freeze everything else, keep the head trainable.

    Methods with `needs_selection` take the output of their `compute_selection` stage as `selection`.
    """
    if method.needs_selection:
        if selection is None and method.selection is None:
            raise MethodError(f"method '{method.name}' needs its selection stage first: "
                              f"selection = method.compute_selection(model, train_batches, num_classes)")
        if selection is not None:
            method.selection = dict(selection)
    elif selection is not None:
        raise MethodError(f"method '{method.name}' takes no selection")
    for param in model.parameters():
        param.requires_grad_(False)
    matched = method.inject(model)
    check_references(model)
    for layer in method_layers(model):  # new layers follow the model's mode (dropout off in eval)
        layer.train(model.training)
    selected = set(method.select_backbone_parameters(model))
    for name, param in model.named_parameters():
        if name in selected:
            param.requires_grad_(True)
    for name in method.method_parameter_names(model):
        model.get_parameter(name).requires_grad_(True)
    head = classifier_parameter_names(model)
    for name, param in model.named_parameters():
        if name in head:
            param.requires_grad_(True)
    return AppliedMethod(model=model, method=method, matched=matched)
