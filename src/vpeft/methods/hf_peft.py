"""huggingface peft's tuners as benchmark methods (`peft-lora`, `peft-dora`, `peft-vera`, ...), run by
peft's own code on the unmodified timm model.

Each row of `TUNERS` is one registered method: the peft config class it builds, that class's
arguments in peft's own terms (`r`, `lora_alpha`, `use_dora`, ...), and its default targets as timm
module names (`qkv`, `attn.proj`, `fc1`, `fc2`, `norm1`: a module's name or a dotted tail of it, as
peft matches names). The targets are resolved here to the exact module names of the model at hand
(so any timm backbone works and `proj` never silently means `patch_embed.proj` as well; timm's
`nn.Identity` placeholders of absent layers are never targets), a target that matches nothing stops
the run naming it, and peft's tuner class injects its layers in place (what
`peft.inject_adapter_in_model` does); the tuner object is kept beside the model (not registered in
it) for merging and for AdaLoRA's budget schedule. The model stays a timm model throughout:
`merge_and_unload` is peft's, and returns the plain timm architecture.

peft is imported lazily: registering these methods (and validating their YAML, which every Snakefile
parse does) reads only the installed version, while building a model imports peft (about 2.5 s of
CPU once per process). peft checks its own arguments then; a wrong one stops the run naming the method,
the config class and its valid arguments.

AdaLoRA's schedule is driven by the run's optimiser steps: `total_step` is the engine's step count
and `tinit` / `tfinal` come from `schedule` as fractions of it; `update_and_allocate` runs after
every optimiser step (`begin_training`). peft adds AdaLoRA's orthogonal regulariser only to a
transformers output that carries a `.loss`; a timm model returns logits, so it is not applied here.
The rank allocator's running sensitivities live in the tuner, not in the trained tensors: a run
resumed from a checkpoint restarts them (an uninterrupted run is what the results are).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from .base import MethodConfig, MethodError, PeftMethod, official_code
from .registry import register_method

try:
    PEFT_VERSION = importlib.metadata.version("peft")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - peft is a dependency
    raise ImportError("vpeft needs huggingface peft for its peft-* methods: pip install 'peft>=0.21,<0.22'") from None

#: Where the peft model keeps its tuner object (a plain attribute: registered as a child, the tuner,
#: which holds the model, would make the module tree cyclic). `copy.deepcopy` copies it along and
#: points the copy's tuner at the copied model.
_TUNER_ATTR = "_vpeft_peft_tuner"
ADAPTER = "default"
#: AdaLoRA's schedule length until the engine gives the run's step count (`begin_training`): only
#: the layers' shapes are built from it, so counting or merging outside a run does not depend on it.
STEPS_BEFORE_TRAINING = 1000


@dataclass(frozen=True)
class Tuner:
    """One shipped peft tuner: `args` and `targets` are the defaults of its method's config."""

    name: str
    peft_config: str                 # peft config class
    args: dict                       # its arguments in peft's terms (targets excluded)
    targets: tuple                   # timm module names
    paper: str
    files: tuple                     # peft source files that run (the provenance)
    module_args: tuple = ()          # args that name modules, resolved like the targets (IA3's feed-forward)
    schedule: dict = field(default_factory=dict)  # args given as fractions of the run's optimiser steps
    mergeable: bool = True
    identity_at_init: bool = True    # peft's default init leaves the model's function unchanged
    meta_device: bool = True         # peft can build it on the meta device (counts at real size)
    notes: str = ""


_LORA = ("src/peft/tuners/lora/layer.py", "src/peft/tuners/lora/model.py")
TUNERS = (
    Tuner("peft-lora", "LoraConfig", {"r": 8, "lora_alpha": 8}, ("qkv",),
          "Hu et al., LoRA, ICLR 2022 (huggingface peft)", _LORA,
          notes="one A and B on the whole fused qkv (q, k and v); the same count as our lora on q and v"),
    Tuner("peft-dora", "LoraConfig", {"r": 8, "lora_alpha": 8, "use_dora": True}, ("qkv",),
          "Liu et al., DoRA, ICML 2024 (huggingface peft)", (*_LORA, "src/peft/tuners/lora/dora.py")),
    Tuner("peft-rslora", "LoraConfig", {"r": 8, "lora_alpha": 8, "use_rslora": True}, ("qkv",),
          "Kalajdzievski, rsLoRA, arXiv 2023 (huggingface peft)", _LORA, notes="scale lora_alpha / sqrt(r)"),
    Tuner("peft-pissa", "LoraConfig", {"r": 8, "lora_alpha": 8, "init_lora_weights": "pissa"}, ("qkv",),
          "Meng et al., PiSSA, NeurIPS 2024 (huggingface peft)", _LORA, identity_at_init=False,
          notes="full SVD (deterministic); the frozen base weight becomes the residual W - B A, so the "
                "model equals the backbone only up to float rounding"),
    Tuner("peft-vera", "VeraConfig", {"r": 256}, ("qkv",),
          "Kopiczko et al., VeRA, ICLR 2024 (huggingface peft)",
          ("src/peft/tuners/vera/layer.py", "src/peft/tuners/vera/model.py"),
          notes="shared frozen random A and B from projection_prng_key"),
    Tuner("peft-oft", "OFTConfig", {"r": 0, "oft_block_size": 32}, ("qkv",),
          "Qiu et al., OFT, NeurIPS 2023 (huggingface peft)",
          ("src/peft/tuners/oft/layer.py", "src/peft/tuners/oft/model.py")),
    Tuner("peft-boft", "BOFTConfig", {"boft_block_size": 4, "boft_n_butterfly_factor": 1}, ("qkv",),
          "Liu et al., BOFT, ICLR 2024 (huggingface peft)",
          ("src/peft/tuners/boft/layer.py", "src/peft/tuners/boft/model.py"), meta_device=False,
          notes="butterfly factor 1 by default: without its compiled CUDA kernel peft silently drops larger "
                "factors to 1, so a larger one runs only where that kernel builds (else the run stops)"),
    Tuner("peft-hra", "HRAConfig", {"r": 8}, ("qkv",),
          "Yuan et al., HRA, NeurIPS 2024 (huggingface peft)",
          ("src/peft/tuners/hra/layer.py", "src/peft/tuners/hra/model.py")),
    Tuner("peft-ia3", "IA3Config", {"feedforward_modules": ["fc2"]}, ("qkv", "fc2"),
          "Liu et al., (IA)^3, NeurIPS 2022 (huggingface peft)",
          ("src/peft/tuners/ia3/layer.py", "src/peft/tuners/ia3/model.py"), module_args=("feedforward_modules",),
          notes="scales the qkv output and the fc2 input (the MLP's hidden activations)"),
    Tuner("peft-loha", "LoHaConfig", {"r": 8, "alpha": 8}, ("qkv",),
          "Hyeon-Woo et al., FedPara / LoHa, ICLR 2022 (huggingface peft)",
          ("src/peft/tuners/loha/layer.py", "src/peft/tuners/lycoris_utils.py")),
    Tuner("peft-lokr", "LoKrConfig", {"r": 8, "alpha": 8}, ("qkv",),
          "Yeh et al., LyCORIS / LoKr, ICLR 2024 (huggingface peft)",
          ("src/peft/tuners/lokr/layer.py", "src/peft/tuners/lycoris_utils.py")),
    Tuner("peft-adalora", "AdaLoraConfig", {"init_r": 12, "target_r": 8, "lora_alpha": 8}, ("qkv",),
          "Zhang et al., AdaLoRA, ICLR 2023 (huggingface peft)",
          ("src/peft/tuners/adalora/layer.py", "src/peft/tuners/adalora/model.py"),
          schedule={"tinit": 0.1, "tfinal": 0.2},
          notes="total_step = the run's optimiser steps; orthogonal regulariser not applied (timm returns logits)"),
    Tuner("peft-fourierft", "FourierFTConfig", {"n_frequency": 3000, "scaling": 300.0}, ("qkv",),
          "Gao et al., FourierFT, ICML 2024 (huggingface peft)",
          ("src/peft/tuners/fourierft/layer.py", "src/peft/tuners/fourierft/model.py"), identity_at_init=False,
          notes="peft's default init: Gaussian spectrum (init_weights false), as the paper"),
    Tuner("peft-ln-tuning", "LNTuningConfig", {}, ("norm1", "norm2", "norm"),
          "Zhao et al., LN tuning, ICLR 2024 (huggingface peft)",
          ("src/peft/tuners/ln_tuning/layer.py", "src/peft/tuners/ln_tuning/model.py"),
          notes="every LayerNorm of the blocks and the final norm: the tensors of our ln-tune"),
)


@dataclass
class PeftTunerConfig(MethodConfig):
    """Base of the peft methods' configs; each method's subclass holds its tuner's defaults.

    peft_config: the peft config class (fixed per method; written out so a YAML reads as peft's).
    args: that class's arguments in peft's terms, laid over the method's defaults.
    target_modules: timm module names (or dotted tails) the tuner adapts.
    schedule: arguments given as fractions of the run's optimiser steps (AdaLoRA's tinit, tfinal).
    """

    tuner: ClassVar[Tuner]
    peft_config: str = ""
    args: dict = field(default_factory=dict)
    target_modules: tuple = ()
    schedule: dict = field(default_factory=dict)

    def validate(self):
        t, name = self.tuner, self.tuner.name
        if self.peft_config != t.peft_config:
            raise MethodError(f"{name}.peft_config: {name} runs peft's {t.peft_config}, not {self.peft_config!r}; "
                              f"another tuner is another method (vpeft methods lists them)")
        for key in ("args", "schedule"):
            if not isinstance(getattr(self, key), dict):
                raise MethodError(f"{name}.{key}: expected a mapping of argument -> value, got {getattr(self, key)!r}")
        self.args = {**copy.deepcopy(t.args), **self.args}
        self.schedule = {**t.schedule, **self.schedule}
        for key in ("target_modules", "total_step", *self.schedule):
            if key in self.args:
                where = {"target_modules": f"{name}.target_modules (timm module names)",
                         "total_step": "the engine (the run's optimiser steps)"}.get(key, f"{name}.schedule.{key}")
                raise MethodError(f"{name}.args.{key}: set by {where}, not in args")
        unknown = sorted(set(self.schedule) - set(t.schedule))
        if unknown:
            raise MethodError(f"{name}.schedule: {unknown} are not step-scheduled arguments of {name}; "
                              f"valid: {', '.join(sorted(t.schedule)) or '(none)'}")
        bad = {k: v for k, v in self.schedule.items() if not (isinstance(v, (int, float)) and 0 <= v < 1)}
        if bad:
            raise MethodError(f"{name}.schedule: fractions of the run's steps must be in [0, 1), got {bad}")
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules or not all(isinstance(x, str) and x.strip() for x in self.target_modules):
            raise MethodError(f"{name}.target_modules: give timm module names such as qkv, attn.proj, fc1, "
                              f"got {self.target_modules!r}")


def resolve_targets(model: nn.Module, names, method: str) -> list[str]:
    """Exact module names of `model` that `names` (module names or dotted tails, peft's rule) select.
    timm's `nn.Identity` placeholders (an absent norm, an absent projection) are skipped; a name that
    selects nothing is an error naming it."""
    modules = dict(model.named_modules())
    out: list[str] = []
    for target in names:
        found = [n for n, m in modules.items() if n and (n == target or n.endswith("." + target))
                 and not isinstance(m, nn.Identity)]
        if not found:
            leaves = sorted({n.rpartition(".")[2] for n, m in modules.items()
                             if isinstance(m, (nn.Linear, nn.LayerNorm, nn.Conv2d))})
            raise MethodError(f"{method}: target '{target}' matches no module of {type(model).__name__}; "
                              f"its module names include: {', '.join(leaves)}")
        out += [n for n in found if n not in out]
    return out


def _exact(names: list[str]) -> str:
    """A regex peft full-matches against module names: exactly these (a list would also match tails)."""
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


class PeftTunerMethod(PeftMethod):
    """A huggingface peft tuner applied by peft's tuner class; subclasses are built from `TUNERS`."""

    category = "peft"
    tuner: ClassVar[Tuner]

    def peft_config_for(self, model: nn.Module, total_steps: int = STEPS_BEFORE_TRAINING):
        """The peft config object for `model`: the method's args with the targets resolved to its modules."""
        import peft

        c, t = self.config, self.tuner
        kwargs = dict(c.args)
        kwargs["target_modules"] = _exact(resolve_targets(model, c.target_modules, self.name))
        for key in t.module_args:
            if kwargs.get(key) is not None:
                kwargs[key] = _exact(resolve_targets(model, kwargs[key], f"{self.name}.args.{key}"))
        if t.schedule:
            kwargs["total_step"] = total_steps
            kwargs.update({k: int(f * total_steps) for k, f in c.schedule.items()})
        config_cls = getattr(peft, t.peft_config)
        try:
            return config_cls(**kwargs)
        except TypeError as err:
            valid = sorted(f.name for f in dataclasses.fields(config_cls) if f.init)
            raise MethodError(f"{self.name}.args: peft's {t.peft_config} rejects them ({err}); "
                              f"its arguments: {', '.join(valid)}") from None
        except ValueError as err:
            raise MethodError(f"{self.name}.args: peft's {t.peft_config}: {err}") from None

    def inject(self, model):
        from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

        config = self.peft_config_for(model)
        tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type]
        try:
            with warnings.catch_warnings():  # BOFT's notes on its optional CUDA kernel (checked below)
                warnings.filterwarnings("ignore", message=".*(CUDA extension|boft_n_butterfly_factor).*")
                if self.tuner.peft_config == "BOFTConfig":
                    _check_butterfly(self.name, config)
                tuner = tuner_cls(model, config, adapter_name=ADAPTER)
        except (ValueError, TypeError, NotImplementedError) as err:
            raise MethodError(f"{self.name} cannot run on {type(model).__name__}: peft's {tuner_cls.__name__} "
                              f"refuses its targets {list(self.config.target_modules)}: {err}") from None
        model.__dict__[_TUNER_ATTR] = tuner
        return sorted(tuner.targeted_module_names)

    def method_parameter_names(self, model):
        """peft's own rule (`_mark_only_adapters_as_trainable`): the tensors whose names carry the tuner's
        prefix (`lora_`, `vera_lambda_`, `oft_`, ...), inside peft's layers and outside their base layer."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        prefix = _tuner(model, self.name).prefix
        return [f"{layer_name}.{n}" for layer_name, layer in model.named_modules() if isinstance(layer, BaseTunerLayer)
                for n, _ in layer.named_parameters() if prefix in n and not n.startswith("base_layer.")]

    def begin_training(self, model, total_steps, first_step=0):
        if not self.tuner.schedule:
            return None
        tuner = _tuner(model, self.name)
        # peft's rank allocator reads its config at every step: the run's schedule replaces the
        # provisional one, validated by peft's own config checks first
        scheduled = self.peft_config_for(model, total_steps)
        config = tuner.peft_config[ADAPTER]
        for key in ("total_step", *self.config.schedule):
            setattr(config, key, getattr(scheduled, key))
        steps = iter(range(first_step, sys.maxsize))
        return lambda: tuner.update_and_allocate(next(steps))

    def merge(self, model):
        self._check_mergeable()
        for layer in _tuner_layers(model):
            layer.merge()

    def unmerge(self, model):
        self._check_mergeable()
        for layer in _tuner_layers(model):
            layer.unmerge()

    def merge_and_unload(self, model):
        """peft's `merge_and_unload`: every tuner layer folded into its base layer, the plain timm model."""
        self._check_mergeable()
        tuner = _tuner(model, self.name)
        plain = tuner.merge_and_unload()
        del plain.__dict__[_TUNER_ATTR]
        return plain

    def _check_mergeable(self):
        if not self.mergeable:
            raise MethodError(f"method '{self.name}' is not mergeable")


def peft_tuner(model: nn.Module):
    """The peft tuner object (`LoraModel`, `VeraModel`, ...) a peft-* method injected into `model`, or None."""
    return model.__dict__.get(_TUNER_ATTR)


def _tuner(model: nn.Module, method: str):
    tuner = peft_tuner(model)
    if tuner is None:
        raise MethodError(f"{method}: the model holds no peft tuner; apply the method with apply_method first")
    return tuner


def _check_butterfly(method: str, config) -> None:
    """peft's BOFT replaces a butterfly factor > 1 by 1 when its CUDA kernel cannot be compiled: the
    method would then depend on the machine. Refuse instead."""
    from peft.tuners.boft.layer import get_fbd_cuda

    if config.boft_n_butterfly_factor > 1 and not get_fbd_cuda():
        raise MethodError(f"{method}: boft_n_butterfly_factor={config.boft_n_butterfly_factor} needs peft's compiled "
                          f"BOFT CUDA kernel (ninja and a CUDA toolchain), which is not available here; without it "
                          f"peft would silently use 1. Set args.boft_n_butterfly_factor: 1")


def _tuner_layers(model: nn.Module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def _register(t: Tuner) -> type[PeftTunerMethod]:
    stem = "".join(part.title() for part in t.name.split("-"))
    config_cls = dataclasses.make_dataclass(f"{stem}Config", [
        ("peft_config", str, field(default=t.peft_config)),
        ("args", dict, field(default_factory=lambda: copy.deepcopy(t.args))),
        ("target_modules", tuple, field(default=t.targets)),
        ("schedule", dict, field(default_factory=lambda: dict(t.schedule))),
    ], bases=(PeftTunerConfig,), namespace={"tuner": t, "__module__": __name__})
    method_cls = type(stem, (PeftTunerMethod,), {
        "__module__": __name__, "name": t.name, "config_cls": config_cls, "tuner": t, "mergeable": t.mergeable,
        "paper": t.paper,
        "provenance": official_code("huggingface/peft", "", *t.files, version=PEFT_VERSION, notes=t.notes),
    })
    globals()[config_cls.__name__] = config_cls  # importable by name (pickling a config or a method)
    globals()[stem] = method_cls
    return register_method(method_cls)


for _t in TUNERS:
    _register(_t)
