"""NOAH, Neural prOmpt seArcH (Zhang, Zhou & Liu, 2022, arXiv 2206.04673; ZhangYuanhan-AI/NOAH).

NOAH treats three PEFT modules as "prompt modules" and searches, per dataset, how large each one is
in every block. Every block ``i`` may hold:

* ``p_i`` VPT-Deep prompt tokens, appended at the *end* of the token sequence at the block's input
  (no position embedding). As NOAH's block forward: a block with prompts replaces the last ``p_{i-1}``
  tokens (the previous block's prompt outputs) by its own, or appends its own when the previous block
  had none (``p_{i-1} = 0``), so prompts of earlier blocks stay in the sequence; a block without prompts
  carries the current ones through. All prompt outputs are removed after the last block, so the head
  sees the original token layout. Dropout 0.1 on the prompt tokens, drawn per sample (after expanding
  over the batch, as NOAH).
* a LoRA update of rank ``r_i`` on the fused ``attn.qkv`` projection (all of q, k and v: A is r x d,
  B is 3d x r), no alpha/r scaling, dropout 0.1 on the branch input;
* an Adapter of bottleneck ``a_i`` on the MLP branch *after* its DropPath, as NOAH's block forward
  ``x + adapter(drop_path(mlp(norm2(x))))``: ``z + W_up drop(QuickGELU(W_down z + b_d)) + b_u`` with
  ``z = DropPath(MLP(LN2(x)))``, dropout 0.1 (injected by wrapping ``blocks.N.drop_path2``, as the
  project's ``adapter``).

A dimension of 0 means the module is absent from that block. ``prompt_dims``, ``lora_ranks`` and
``adapter_dims`` give one value per block (or a single value for every block).

Init, as NOAH's code: prompts Xavier-uniform, LoRA A Kaiming-uniform(a=sqrt 5) and B zero, adapter
weights Xavier-uniform (both of them: the adapter is *not* an identity at init) and biases N(0, 1e-6).
NOAH draws every tensor as a slice of a 100-wide supernet tensor (its configs set the SUPERNET dims to
100), so the Xavier bounds use that width: prompts U(+-sqrt(6 / (101 d))), adapter weights
U(+-sqrt(6 / (d + 100))). The model is therefore not unchanged at init (prompts, adapters).

Parameters of a subnet (d = embedding width; the qkv input is d wide, its output 3d):
    sum_i  p_i * d  +  4 * d * r_i  +  [a_i > 0] * (2 * d * a_i + a_i + d)
On ViT-B/16 (d = 768): sum_i 768 p_i + 3072 r_i + [a_i > 0] (1537 a_i + 768).
NOAH's released VTAB subnets (in config/methods/noah.yaml) give 287,278 ... 431,686, mean 360,134
(0.36 M) by this formula; V-PETL / the NOAH paper print 0.43 M, which we do NOT reproduce. NOAH's own
counter (`get_sampled_params_numel`) adds two tensors that never train: an input-level prompt slice
of p_0 tokens that block 0 immediately replaces by its own prompts, and the full 100 x 768 position
embedding of those input prompts (76,800). With them the mean is 442,512 (0.44 M), still not 0.43 M.
We count only tensors that train. Not mergeable (prompts, non-linear adapter).

Two modes:

* ``mode: subnet`` (default): an ordinary PEFT method with exactly the given per-block dimensions.
  NOAH's final stage retrains the searched subnet this way, from scratch.
* ``mode: supernet``: every block holds the largest tensors of the search space (max of the choices
  and of the given dims) and a *slice* of them is active (AutoFormer-style weight entanglement: a
  smaller dim uses the first rows/columns); the largest subnet is active after injection.
  ``model.noah.set_active(subnet)`` selects a slice;
  ``model.noah.sample_active(generator)`` draws one from the search space. In train mode a forward
  pre-hook on the model draws a new subnet before every forward pass (= once per training step in a
  plain loop), from the controller's own generator (`model.noah.reseed(seed)`); in eval mode the
  active subnet stays as set. ``subnet_state_dict(model, subnet)`` extracts the inherited weights of
  a subnet for a subnet-mode model.

Search space (NOAH's VTAB config): dims {1, 5, 10} for each module, and for each module separately a
depth from {3, 6, 9, 12}: the first `depth` blocks get a dim from the choices, the rest 0. We give the
depth choices as fractions of the model depth (0.25, 0.5, 0.75, 1.0) so they scale to any ViT.
NOAH also has prefix tuning in its code, switched off (dim 0) in its VTAB search; we omit it.

The NAS stages (supernet training, evolutionary search on the validation split) live in
`vpeft.engine.noah_search`; the search settings are hyper-parameters here so that config/methods/
noah.yaml holds all of NOAH's settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    MethodConfig,
    MethodError,
    MethodLayer,
    ModuleRef,
    PeftMethod,
    classifier_parameter_names,
    replace_module,
)
from .base import official_code
from .registry import register_method

#: The three per-block dimension lists of a subnet, in the order NOAH lists them.
SUBNET_KEYS = ("prompt_dims", "lora_ranks", "adapter_dims")
_CHOICE_KEYS = {"prompt_dims": "prompt_choices", "lora_ranks": "lora_choices", "adapter_dims": "adapter_choices"}
#: NOAH's supernet tensors are 100 wide (SUPERNET.*_DIM in its configs): the width behind its Xavier bounds.
NOAH_SUPERNET_WIDTH = 100
_MODES = ("subnet", "supernet")


def _ints(values, where: str) -> tuple:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise MethodError(f"{where}: expected a list of integers, got {values!r}") from None
    if any(isinstance(v, float) and not float(v).is_integer() for v in values):
        raise MethodError(f"{where}: expected integers, got {values!r}")
    return out


@dataclass
class NoahConfig(MethodConfig):
    """Args:
    prompt_dims, lora_ranks, adapter_dims: the subnet, one value per block (or one for all blocks);
        0 = module absent in that block.
    mode: "subnet" (train exactly these dims) or "supernet" (largest tensors, sliced per step).
    prompt_choices, lora_choices, adapter_choices: per-block dims the search space offers.
    depth_choices: for each module, the fraction of leading blocks that hold it (NOAH: 3/6/9/12 of 12).
    dropout: dropout on prompt tokens, on the LoRA input and inside the adapter (NOAH: 0.1 each).
    supernet_epochs, supernet_lr: supernet training (NOAH VTAB: 500 epochs, lr 5e-4; other training
        settings come from the run's training config).
    param_budget: the search keeps subnets with at most this many parameters (our exact count).
    search_population, search_select, search_generations, search_mutation_prob, search_depth_prob:
        evolutionary search (NOAH: 50, top-10, 15 generations, m_prob 0.2, s_prob 0.4).
    """

    prompt_dims: tuple = field(default=(5,), metadata={"help": "VPT-Deep tokens per block (0 = none)"})
    lora_ranks: tuple = field(default=(5,), metadata={"help": "LoRA rank on qkv per block (0 = none)"})
    adapter_dims: tuple = field(default=(5,), metadata={"help": "adapter bottleneck per block (0 = none)"})
    mode: str = field(default="subnet", metadata={"help": "subnet | supernet"})
    prompt_choices: tuple = field(default=(1, 5, 10), metadata={"help": "search space: prompt tokens"})
    lora_choices: tuple = field(default=(1, 5, 10), metadata={"help": "search space: LoRA ranks"})
    adapter_choices: tuple = field(default=(1, 5, 10), metadata={"help": "search space: adapter widths"})
    depth_choices: tuple = field(default=(0.25, 0.5, 0.75, 1.0),
                                 metadata={"help": "search space: fraction of leading blocks per module"})
    dropout: float = field(default=0.1, metadata={"help": "dropout of prompts, LoRA input, adapter"})
    supernet_epochs: int = field(default=500, metadata={"help": "supernet training epochs"})
    supernet_lr: float = field(default=5e-4, metadata={"help": "supernet peak learning rate"})
    param_budget: int = field(default=640_000, metadata={"help": "search: max parameters of a subnet"})
    search_population: int = field(default=50, metadata={"help": "search: candidates per generation"})
    search_select: int = field(default=10, metadata={"help": "search: top-k parents"})
    search_generations: int = field(default=15, metadata={"help": "search: generations after the first"})
    search_mutation_prob: float = field(default=0.2, metadata={"help": "search: mutation probability"})
    search_depth_prob: float = field(default=0.4, metadata={"help": "search: depth-change probability"})

    def __post_init__(self) -> None:
        for key in SUBNET_KEYS + tuple(_CHOICE_KEYS.values()):
            setattr(self, key, _ints(getattr(self, key), f"noah.{key}"))
        try:
            self.depth_choices = tuple(float(v) for v in self.depth_choices)
        except (TypeError, ValueError):
            raise MethodError(f"noah.depth_choices: expected fractions, got {self.depth_choices!r}") from None
        super().__post_init__()

    def validate(self):
        if self.mode not in _MODES:
            raise MethodError(f"noah.mode must be one of {_MODES}, got {self.mode!r}")
        for key in SUBNET_KEYS:
            dims = getattr(self, key)
            if not dims or any(v < 0 for v in dims):
                raise MethodError(f"noah.{key} must be a non-empty list of dims >= 0, got {dims}")
        if self.mode == "subnet" and not any(v for key in SUBNET_KEYS for v in getattr(self, key)):
            raise MethodError("noah: every dim of the subnet is 0; the method would train nothing")
        for key in _CHOICE_KEYS.values():
            choices = getattr(self, key)
            if not choices or any(v < 1 for v in choices):
                raise MethodError(f"noah.{key} must be a non-empty list of dims >= 1, got {choices}")
        if not self.depth_choices or any(not 0.0 < f <= 1.0 for f in self.depth_choices):
            raise MethodError(f"noah.depth_choices must be fractions of the depth in (0, 1], got "
                              f"{self.depth_choices}")
        if not 0.0 <= self.dropout < 1.0:
            raise MethodError(f"noah.dropout must be in [0, 1), got {self.dropout}")
        if self.supernet_epochs < 1 or self.supernet_lr <= 0:
            raise MethodError("noah.supernet_epochs must be >= 1 and noah.supernet_lr > 0")
        if self.param_budget < 1:
            raise MethodError(f"noah.param_budget must be >= 1, got {self.param_budget}")
        if self.search_population < 2 or not 1 <= self.search_select <= self.search_population:
            raise MethodError("noah: need search_population >= 2 and 1 <= search_select <= search_population")
        if self.search_generations < 0:
            raise MethodError(f"noah.search_generations must be >= 0, got {self.search_generations}")
        for key in ("search_mutation_prob", "search_depth_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise MethodError(f"noah.{key} must be in [0, 1], got {getattr(self, key)}")

    def subnet(self, depth: int) -> dict[str, tuple]:
        """The configured subnet with one dim per block."""
        return {key: resolve_dims(getattr(self, key), depth, key) for key in SUBNET_KEYS}

    def choices(self, key: str) -> tuple:
        return getattr(self, _CHOICE_KEYS[key])


# -- subnets as data -------------------------------------------------------------------------------

def resolve_dims(values, depth: int, key: str = "dims") -> tuple:
    """One dim per block: a single value is broadcast, otherwise the length must equal the depth."""
    values = tuple(int(v) for v in values)
    if len(values) == 1:
        return values * depth
    if len(values) != depth:
        raise MethodError(f"noah.{key} has {len(values)} values but the model has {depth} blocks; "
                          f"give one value per block or a single value for all")
    return values


def normalize_subnet(subnet: dict, depth: int) -> dict[str, tuple]:
    unknown = sorted(set(subnet) - set(SUBNET_KEYS))
    missing = [k for k in SUBNET_KEYS if k not in subnet]
    if unknown or missing:
        raise MethodError(f"noah subnet needs exactly the keys {SUBNET_KEYS}; unknown {unknown}, missing {missing}")
    out = {key: resolve_dims(subnet[key], depth, key) for key in SUBNET_KEYS}
    if any(v < 0 for dims in out.values() for v in dims):
        raise MethodError(f"noah subnet dims must be >= 0: {out}")
    return out


def subnet_parameter_count(subnet: dict, embed_dim: int) -> int:
    """The subnet's trainable parameters in a ViT of width `embed_dim` (the formula in the docstring)."""
    d = embed_dim
    count = 0
    for p, r, a in zip(*(subnet[k] for k in SUBNET_KEYS)):
        count += p * d + 4 * d * r + ((2 * d * a + a + d) if a else 0)
    return count


def resolve_depth_choices(fractions, depth: int) -> tuple:
    """Depth fractions as block counts, e.g. (0.25, 0.5, 0.75, 1.0) -> (3, 6, 9, 12) at depth 12."""
    return tuple(sorted({min(depth, max(1, round(f * depth))) for f in fractions}))


def _pick(seq, generator: torch.Generator):
    return seq[int(torch.randint(len(seq), (1,), generator=generator).item())]


def sample_module_dims(choices, depth_choices, depth: int, generator: torch.Generator) -> tuple:
    """NOAH's sampling for one module: a depth k, then a dim for each of the first k blocks, 0 after."""
    k = _pick(depth_choices, generator)
    return tuple(_pick(choices, generator) for _ in range(k)) + (0,) * (depth - k)


def sample_subnet(config: NoahConfig, depth: int, generator: torch.Generator) -> dict[str, tuple]:
    """A random subnet of the search space (NOAH's `sample_configs`)."""
    depths = resolve_depth_choices(config.depth_choices, depth)
    return {key: sample_module_dims(config.choices(key), depths, depth, generator) for key in SUBNET_KEYS}


def subnet_key(subnet: dict) -> tuple:
    return tuple(tuple(subnet[k]) for k in SUBNET_KEYS)


# -- layers ------------------------------------------------------------------------------------------

class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _xavier_bound(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / float(fan_in + fan_out))


class NoahLora(MethodLayer):
    """LoRA on the whole fused qkv output; the first `rank` rows of A / columns of B are active."""

    def __init__(self, base_layer: nn.Linear, max_rank: int, dropout: float):
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.Parameter(torch.empty(max_rank, base_layer.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, max_rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # fan_in = d: independent of the rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.rank = max_rank

    @property
    def max_dim(self) -> int:
        return self.lora_A.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.rank == 0:
            return out
        r = self.rank
        return out + F.linear(F.linear(self.dropout(x), self.lora_A[:r]), self.lora_B[:, :r])

    def sliced(self, rank: int) -> dict[str, torch.Tensor]:
        return {"lora_A": self.lora_A[:rank], "lora_B": self.lora_B[:, :rank]}

    def parameter_count(self, rank: int) -> int:
        return rank * (self.lora_A.shape[1] + self.lora_B.shape[0])


class NoahAdapter(MethodLayer):
    """Adapter on the output of the wrapped module (a block's `drop_path2`, so it reads the dropped-path
    MLP output as NOAH's block); the first `hidden` units are active."""

    def __init__(self, base_layer: nn.Module, dim: int, max_hidden: int, dropout: float, init_width: int):
        super().__init__()
        self.base_layer = base_layer
        bound = _xavier_bound(dim, init_width)
        self.down_weight = nn.Parameter(torch.empty(max_hidden, dim).uniform_(-bound, bound))
        self.down_bias = nn.Parameter(torch.empty(max_hidden).normal_(0.0, 1e-6))
        self.up_weight = nn.Parameter(torch.empty(dim, max_hidden).uniform_(-bound, bound))
        self.up_bias = nn.Parameter(torch.empty(dim).normal_(0.0, 1e-6))
        self.act = QuickGELU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.hidden = max_hidden

    @property
    def max_dim(self) -> int:
        return self.down_weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base_layer(x)
        if self.hidden == 0:
            return z
        a = self.hidden
        h = self.dropout(self.act(F.linear(z, self.down_weight[:a], self.down_bias[:a])))
        return z + F.linear(h, self.up_weight[:, :a], self.up_bias)

    def sliced(self, hidden: int) -> dict[str, torch.Tensor]:
        return {"down_weight": self.down_weight[:hidden], "down_bias": self.down_bias[:hidden],
                "up_weight": self.up_weight[:, :hidden], "up_bias": self.up_bias}

    def parameter_count(self, hidden: int) -> int:
        dim = self.up_weight.shape[0]
        return (2 * dim * hidden + hidden + dim) if hidden else 0


class NoahController(MethodLayer):
    """Holds the per-block prompts and the hooks that splice them in, knows every NOAH layer of the
    model and which subnet is active. Lives at `model.noah`."""

    def __init__(self, model: nn.Module, config: NoahConfig, sizes: dict[str, tuple],
                 loras: list, adapters: list, init_width: int):
        super().__init__()
        self.config = config
        self.embed_dim = model.embed_dim
        self.depth = len(model.blocks)
        self.sizes = sizes  # the tensor width per block and module (0: no tensor)
        # References (not registered): the layers are children of the blocks already.
        self._loras = [ModuleRef(layer) if layer is not None else None for layer in loras]
        self._adapters = [ModuleRef(layer) if layer is not None else None for layer in adapters]
        bound = math.sqrt(6.0 / float((init_width + 1) * self.embed_dim))
        self.prompts = nn.ParameterDict({
            str(i): nn.Parameter(torch.empty(p, self.embed_dim).uniform_(-bound, bound))
            for i, p in enumerate(sizes["prompt_dims"]) if p > 0})
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.generator = torch.Generator().manual_seed(0)
        self.sample_on_forward = config.mode == "supernet"
        self._carried = 0
        if self.prompts:
            for i, block in enumerate(model.blocks):
                self.add_forward_pre_hook(block, self._enter_block, i)
            self.add_forward_hook(model.blocks[-1], self._leave_last_block)
        if self.sample_on_forward:
            self.add_forward_pre_hook(model, self._sample_before_forward)
        self.active: dict[str, tuple] = {}
        self.set_active(config.subnet(self.depth) if config.mode == "subnet" else sizes)

    @property
    def loras(self) -> list[NoahLora | None]:
        """Each block's NOAH LoRA on qkv (None where the block has none)."""
        return [ref.module if ref is not None else None for ref in self._loras]

    @property
    def adapters(self) -> list[NoahAdapter | None]:
        """Each block's NOAH adapter on the MLP (None where the block has none)."""
        return [ref.module if ref is not None else None for ref in self._adapters]

    # -- the active subnet -------------------------------------------------------------------
    def set_active(self, subnet: dict) -> dict[str, tuple]:
        """Make `subnet` the active slice; every dim must fit the tensors of its block."""
        subnet = normalize_subnet(subnet, self.depth)
        for key in SUBNET_KEYS:
            too_big = [(i, v, s) for i, (v, s) in enumerate(zip(subnet[key], self.sizes[key])) if v > s]
            if too_big:
                i, v, s = too_big[0]
                raise MethodError(f"noah: {key}[{i}] = {v} exceeds the block's tensor width {s}")
        for i, layer in enumerate(self.loras):
            if layer is not None:
                layer.rank = subnet["lora_ranks"][i]
        for i, layer in enumerate(self.adapters):
            if layer is not None:
                layer.hidden = subnet["adapter_dims"][i]
        self.active = subnet
        return subnet

    def sample_active(self, generator: torch.Generator | None = None) -> dict[str, tuple]:
        """Draw a subnet from the search space (NOAH's sampling) and make it active."""
        return self.set_active(sample_subnet(self.config, self.depth, generator or self.generator))

    def reseed(self, seed: int) -> None:
        """Seed the generator that the per-step sampling (supernet mode, train mode) draws from."""
        self.generator.manual_seed(int(seed))

    def active_parameter_count(self) -> int:
        """Parameters of the active subnet (what a subnet-mode model of these dims trains)."""
        return self.subnet_parameter_count(self.active)

    def subnet_parameter_count(self, subnet: dict) -> int:
        subnet = normalize_subnet(subnet, self.depth)
        count = sum(p * self.embed_dim for p in subnet["prompt_dims"])
        count += sum(layer.parameter_count(r) for layer, r in zip(self.loras, subnet["lora_ranks"]) if layer)
        count += sum(layer.parameter_count(a) for layer, a in zip(self.adapters, subnet["adapter_dims"]) if layer)
        return count

    def _sample_before_forward(self, module, args):
        if self.training and self.sample_on_forward:
            self.sample_active(self.generator)

    # -- prompt hooks -------------------------------------------------------------------------
    def _enter_block(self, index: int, module, args):
        x = args[0]
        dims = self.active["prompt_dims"]
        p = dims[index]
        if index == 0:
            self._carried = 0
            if p and self.training:
                # NOAH appends p_0 model-level input prompts (with their own dropout) that block 0
                # replaces before any block reads them; only their dropout draw is left, kept so that
                # the random stream stays NOAH's.
                self.dropout(x.new_zeros(1, p, x.shape[-1]).expand(x.shape[0], -1, -1))
        if p == 0:
            return None  # carry the current prompt outputs through
        tokens = self.prompts[str(index)][:p].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        tokens = self.dropout(tokens)  # one mask per sample: dropout after expanding, as NOAH
        replaced = dims[index - 1] if index > 0 else 0  # NOAH replaces the previous block's p_{i-1} tokens
        x = torch.cat([x[:, :x.shape[1] - replaced], tokens], dim=1)
        self._carried += p - replaced
        return (x, *args[1:])

    def _leave_last_block(self, module, args, output):
        carried, self._carried = self._carried, 0
        return output[:, :output.shape[1] - carried] if carried else output


def noah_controller(model: nn.Module) -> NoahController:
    controller = getattr(model, "noah", None)
    if not isinstance(controller, NoahController):
        raise MethodError("model has no NOAH method applied (expected `model.noah`)")
    return controller


def subnet_state_dict(model: nn.Module, subnet: dict, *, include_head: bool = True) -> dict[str, torch.Tensor]:
    """The tensors a subnet-mode model with `subnet`'s dims trains, sliced from `model`'s (supernet)
    tensors (weight entanglement), keyed by the subnet-mode model's parameter names. Load them with
    `load_state_dict(..., strict=False)`."""
    controller = noah_controller(model)
    subnet = normalize_subnet(subnet, controller.depth)
    state: dict[str, torch.Tensor] = {}
    for i, p in enumerate(subnet["prompt_dims"]):
        if p:
            state[f"noah.prompts.{i}"] = controller.prompts[str(i)][:p]
    names = {id(m): n for n, m in model.named_modules()}
    for layers, key in ((controller.loras, "lora_ranks"), (controller.adapters, "adapter_dims")):
        for layer, dim in zip(layers, subnet[key]):
            if layer is not None and dim:
                for name, tensor in layer.sliced(dim).items():
                    state[f"{names[id(layer)]}.{name}"] = tensor
    if include_head:
        params = dict(model.named_parameters())
        for name in classifier_parameter_names(model):
            state[name] = params[name]
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


# -- the method --------------------------------------------------------------------------------------

@register_method
class Noah(PeftMethod):
    name = "noah"
    category = "unified"
    config_cls = NoahConfig
    mergeable = False
    paper = "Zhang, Zhou & Liu, Neural Prompt Search (NOAH), arXiv 2206.04673, 2022"
    provenance = official_code(
        "ZhangYuanhan-AI/NOAH", "e9c55f360be4f7f1133a08bf84f86f0309e98f8c",
        "model/supernet_vision_transformer_timm.py", "model/module/adapter_super.py", "evolution.py",
        notes="LoRA as the Attention class of supernet_vision_transformer_timm.py, prompts and adapter as "
              "its Block.forward (adapter after the MLP's DropPath); prefix tuning (off in NOAH's VTAB "
              "search) omitted")
    #: The workflow trains a supernet, searches a subnet on val200 and retrains it (engine.noah_search).
    needs_search = True

    def _sizes(self, depth: int) -> dict[str, tuple]:
        c = self.config
        subnet = c.subnet(depth)
        if c.mode == "subnet":
            return subnet
        return {key: (max(max(c.choices(key)), max(subnet[key])),) * depth for key in SUBNET_KEYS}

    def inject(self, model):
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.Sequential) or not hasattr(model, "num_prefix_tokens") \
                or not hasattr(model, "embed_dim"):
            raise MethodError(f"NOAH needs a ViT-style model with a `blocks` sequence over tokens; "
                              f"{type(model).__name__} has none")
        if hasattr(model, "noah"):
            raise MethodError("model already has NOAH applied")
        c = self.config
        depth = len(blocks)
        sizes = self._sizes(depth)
        init_width = max(NOAH_SUPERNET_WIDTH, *(max(v) for v in sizes.values()))
        matched, loras, adapters = [], [], []
        for i, block in enumerate(blocks):
            touched = sizes["prompt_dims"][i] > 0
            qkv = getattr(getattr(block, "attn", None), "qkv", None)
            drop_path = getattr(block, "drop_path2", None)
            if not isinstance(qkv, nn.Linear) or getattr(block, "mlp", None) is None or drop_path is None:
                raise MethodError(f"NOAH: blocks.{i} has no attn.qkv Linear, mlp or drop_path2 (a timm ViT "
                                  f"block has all three)")
            lora = adapter = None
            if sizes["lora_ranks"][i]:
                lora = NoahLora(qkv, sizes["lora_ranks"][i], c.dropout)
                replace_module(model, f"blocks.{i}.attn.qkv", lora)
                matched.append(f"blocks.{i}.attn.qkv")
            if sizes["adapter_dims"][i]:
                adapter = NoahAdapter(drop_path, model.embed_dim, sizes["adapter_dims"][i], c.dropout, init_width)
                replace_module(model, f"blocks.{i}.drop_path2", adapter)
                matched.append(f"blocks.{i}.drop_path2")
            if touched:
                matched.append(f"blocks.{i}")
            loras.append(lora)
            adapters.append(adapter)
        model.add_module("noah", NoahController(model, c, sizes, loras, adapters, init_width))
        return sorted(set(matched), key=lambda n: (int(n.split(".")[1]), n))

    def frozen_prefix_blocks(self, model):
        """Blocks before the first one that holds any NOAH tensor carry no gradient (subnet mode)."""
        depth = len(model.blocks)
        sizes = self._sizes(depth)
        for i in range(depth):
            if any(sizes[key][i] for key in SUBNET_KEYS):
                return i
        return depth
