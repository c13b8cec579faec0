"""Our LoRA training step against huggingface/peft's LoRA on the same timm ViT.

Like with like: timm fuses q, k and v into one `attn.qkv` Linear, so peft (which wraps whole Linear
modules) can only target `qkv`: one A (r x d) shared by q, k, v and one B (3d x r). Ours puts the
paper's rank-r update on the q and v thirds of the same Linear (A_q, B_q, A_v, B_v). At the same rank
both add exactly 4·d·r parameters and 4·d·r multiply-adds per token and layer, from the same frozen
weights, with alpha = r (scale 1), no dropout and the head trainable in both. The step is the
engine's: forward, cross-entropy, backward, AdamW.
"""

from __future__ import annotations

import copy

import torch
from common import apply, interleaved_medians, paired_ratio, train_step_fn, vit


def peft_lora(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=["qkv"], bias="none")
    wrapped = get_peft_model(model, config)
    for p in wrapped.base_model.model.get_classifier().parameters():
        p.requires_grad_(True)  # the task head trains in both
    return wrapped


def no_adapter(model: torch.nn.Module) -> torch.nn.Module:
    """The floor: no LoRA at all, but the backward pass still runs through every block (only the
    position embedding and the head train), as it must for LoRA. No LoRA implementation can be
    cheaper than this; floor / peft bounds the best possible ours / peft."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.pos_embed.requires_grad_(True)
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)
    return model


def run(arch: str, img_size: int, batch: int, rank: int, rounds: int, device: str) -> dict:
    import peft

    base = vit(arch, img_size)
    ours = apply(copy.deepcopy(base), "lora", {"rank": rank, "alpha": float(rank)}, img_size).model
    theirs = peft_lora(copy.deepcopy(base), rank)
    floor = no_adapter(copy.deepcopy(base)).to(device)
    counts = {name: sum(p.numel() for p in m.parameters() if p.requires_grad)
              for name, m in (("ours", ours), ("peft", theirs))}
    ours.to(device)
    theirs.to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, img_size, img_size, generator=g).to(device)
    labels = (torch.arange(batch) % 10).to(device)
    times = interleaved_medians({"ours": train_step_fn(ours, images, labels),
                                 "peft": train_step_fn(theirs, images, labels),
                                 "floor": train_step_fn(floor, images, labels)},
                                warmup=2, rounds=rounds, device=device)
    return {
        "device": str(device), "arch": arch, "img_size": img_size, "batch": batch, "rank": rank, "peft_version": peft.__version__,
        "trainable_params_with_head": counts, "seconds_per_step": times,
        "ratio_ours_over_peft": paired_ratio(times, "ours", "peft", device),
        "ratio_floor_over_peft": paired_ratio(times, "floor", "peft", device),
    }
