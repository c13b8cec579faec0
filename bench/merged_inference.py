"""Inference cost of reparameterisable methods: merged vs the plain backbone, unmerged vs merged.

Every mergeable method that adds layers (LoRA, FacT, Hydra, RepAdapter, SSF, ...) is applied with
its configured defaults, its tensors moved off their (often identity) init, and then folded into the
backbone with `merge_and_unload`, exactly what the engine evaluates. The merged model must be the
plain timm architecture again (checked) and as fast as a never-touched backbone.
"""

from __future__ import annotations

import copy

import torch
from common import apply, interleaved_medians, paired_ratio, vit


def _mergeable_layered_methods() -> list[str]:
    from vpeft.methods import available_methods, get_method_class
    from vpeft.methods.base import SelectiveMethod

    return [m for m in available_methods()
            if get_method_class(m).mergeable and not issubclass(get_method_class(m), SelectiveMethod)]


def run(arch: str, img_size: int, batch: int, rounds: int, device: str) -> dict:
    from vpeft.methods import method_layers

    plain = vit(arch, img_size).to(device).eval()
    # Two objects with identical weights and architecture differ in speed too (memory placement):
    # their ratio is the resolution of the merged / plain comparison on this machine.
    plain_copy = copy.deepcopy(plain)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, img_size, img_size, generator=g).to(device)
    results: dict = {"arch": arch, "img_size": img_size, "batch": batch, "methods": {}}
    for name in _mergeable_layered_methods():
        try:
            applied = apply(vit(arch, img_size), name, img_size=img_size)
        except Exception as err:  # noqa: BLE001 - one method that does not fit must not stop the bench
            results["methods"][name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        unmerged = applied.model.to(device).eval()
        with torch.no_grad():
            for layer in method_layers(unmerged):
                for _, p in layer.method_parameters():
                    p.add_(0.01 * torch.randn(p.shape, generator=g).to(device))
        merged = applied.method.merge_and_unload(copy.deepcopy(unmerged))
        with torch.no_grad():
            diff = (merged(images) - unmerged(images)).abs().max().item()
            plain_arch = type(merged) is type(plain) and not method_layers(merged) and \
                {k: v.shape for k, v in merged.state_dict().items()} == \
                {k: v.shape for k, v in plain.state_dict().items()}

            def infer(model):
                return lambda: model(images)

            times = interleaved_medians({"plain": infer(plain), "plain_copy": infer(plain_copy),
                                         "merged": infer(merged), "unmerged": infer(unmerged)},
                                        warmup=1, rounds=rounds, device=device)
        results["methods"][name] = {
            "seconds_per_batch": times,
            "merged_over_plain": paired_ratio(times, "merged", "plain", device),
            "unmerged_over_merged": paired_ratio(times, "unmerged", "merged", device),
            "noise_floor_plain_copy_over_plain": paired_ratio(times, "plain_copy", "plain", device),
            "max_abs_diff_merged_vs_unmerged": diff, "merged_is_plain_architecture": bool(plain_arch),
        }
    ok = [m for m in results["methods"].values() if "error" not in m]
    if ok:
        results["worst_merged_over_plain"] = max(m["merged_over_plain"]["median"] for m in ok)
        results["worst_noise_floor"] = max(abs(m["noise_floor_plain_copy_over_plain"]["median"] - 1) for m in ok)
    return results
