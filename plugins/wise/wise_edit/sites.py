"""Resolving an ``inner_params`` path (``model.layers[25].mlp.down_proj.weight``) to the modules around it.

Methods never guess an architecture from its name: the configured path says which linear map is edited,
and the last ``[i]`` in it says which decoder layer (in which layer list) holds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn


class SiteError(ValueError):
    """``inner_params`` does not name an editable linear layer of this model."""


@dataclass
class EditSite:
    """Where an edit happens: the linear map, its parent, and its decoder layer's place in the stack."""

    path: str  # the configured inner_params string
    module_path: str  # dotted path of the linear module
    parent: nn.Module
    attr: str
    layers: nn.ModuleList
    layer_index: int

    @property
    def linear(self) -> nn.Module:
        return getattr(self.parent, self.attr)

    def replace(self, module: nn.Module) -> None:
        setattr(self.parent, self.attr, module)

    @property
    def layer(self) -> nn.Module:
        """The decoder layer that holds the edited matrix."""
        return self.layers[self.layer_index]


def hidden_of(output: Any) -> Any:
    """The hidden state in a decoder layer's output (some layers return a tuple, some the tensor alone)."""
    return output[0] if isinstance(output, tuple) else output


class _Reached(Exception):
    """Raised by :func:`run_through` once its layer has run."""


def run_through(model: nn.Module, layer: nn.Module, **inputs: Any) -> Any:
    """Run ``model``'s decoder on ``inputs`` up to and including ``layer``; return that layer's output.

    Whoever reads keys or hidden states at a layer needs nothing above it: stopping there spares the upper
    layers (a sixth of the pass for a site at layer 25 of 30), and hooks below it still see the batch.
    """
    seen: dict[str, Any] = {}

    def stop(module: nn.Module, args: Any, out: Any) -> None:
        seen["out"] = out
        raise _Reached

    hook = layer.register_forward_hook(stop)
    try:
        model.get_decoder()(**inputs, use_cache=False)
    except _Reached:
        pass
    finally:
        hook.remove()
    if "out" not in seen:
        raise SiteError(f"the forward pass never reached the layer {type(layer).__name__} it was asked to stop at "
                        "(is it part of this model's decoder?)")
    return seen["out"]


def resolve_site(model: nn.Module, inner_param: str) -> EditSite:
    """Find the linear module whose ``weight`` ``inner_param`` names, and the decoder layer holding it."""
    dotted = re.sub(r"\[(\d+)\]", r".\1", inner_param.strip())
    if not dotted.endswith(".weight"):
        raise SiteError(f"inner_params entry {inner_param!r} must name a weight (end in '.weight')")
    module_path = dotted[: -len(".weight")]
    parts = module_path.split(".")
    module: nn.Module = model
    for depth, name in enumerate(parts):
        child = module._modules.get(name) if hasattr(module, "_modules") else None
        if child is None:
            here = ".".join(parts[:depth]) or "<model>"
            options = list(module._modules) if hasattr(module, "_modules") else []
            if isinstance(module, nn.ModuleList):
                options = [f"0..{len(module) - 1}"]
            raise SiteError(
                f"inner_params entry {inner_param!r}: {here!r} has no submodule {name!r} (it has {options})"
            )
        module = child
    if not isinstance(module, nn.Linear):
        raise SiteError(f"inner_params entry {inner_param!r} is a {type(module).__name__}, not a torch.nn.Linear"
                        " (a layer that already carries an editor's memory cannot take a second one)")
    index_positions = [i for i, p in enumerate(parts) if p.isdigit()]
    if not index_positions:
        raise SiteError(f"inner_params entry {inner_param!r} names no decoder layer index like 'layers[12]'")
    k = index_positions[-1]
    layers = model.get_submodule(".".join(parts[:k]))
    if not isinstance(layers, nn.ModuleList):
        raise SiteError(f"inner_params entry {inner_param!r}: {'.'.join(parts[:k])!r} is not a layer list")
    return EditSite(
        path=inner_param,
        module_path=module_path,
        parent=model.get_submodule(".".join(parts[:-1])) if len(parts) > 1 else model,
        attr=parts[-1],
        layers=layers,
        layer_index=int(parts[k]),
    )
