"""Features mode: cut the autograd graph at the shared features.

The parameters the features depend on form the trunk, back-propagated once with the
weighted feature gradient; the others, reached from the losses without passing through the
features, are the heads, whose per-objective gradients the k passes collect on the way.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

Node = torch.autograd.graph.Node


def _leaf_ids(roots: Iterable[Node], stop: set[Node]) -> set[int]:
    """Return the ids of the leaf tensors reachable from ``roots`` without entering ``stop``."""
    found: set[int] = set()
    seen: set[Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in seen or node in stop:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            found.add(id(variable))
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return found


def split_at_features(
    tensors: list[torch.Tensor], features: list[torch.Tensor], params: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split ``params`` into the trunk and the heads of the graph cut by ``features``.

    The trunk is what the features depend on; the heads are reached from the losses without
    passing through the features. A parameter on both sides is an error.
    """
    feature_nodes = {f.grad_fn for f in features if f.grad_fn is not None}
    trunk_ids = _leaf_ids(feature_nodes, set())
    head_ids = _leaf_ids([t.grad_fn for t in tensors if t.grad_fn is not None], feature_nodes)
    shared = [p for p in params if id(p) in trunk_ids and id(p) in head_ids]
    if shared:
        raise ValueError(
            f"{len(shared)} parameter(s) (first of shape {tuple(shared[0].shape)}) are used both "
            f"before and after the features: features mode needs the features to cut the graph; "
            f"choose other features or use the parameter Gram (features=None)"
        )
    trunk = [p for p in params if id(p) in trunk_ids]
    heads = [p for p in params if id(p) not in trunk_ids]
    return trunk, heads
