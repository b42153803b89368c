"""What a model costs: parameters and FLOPs, measured with Torch-Pruning's counter.

Convention: ``macs`` is Torch-Pruning's ``count_ops_and_params`` figure as it comes (one
multiply-accumulate per conv/linear weight use, plus bias adds and the per-element work of
norms, pools and upsampling); ``flops = 2 * macs``, the convention ultralytics reports
GFLOPs in. Ratios of the two are identical, so a FLOPs target is a MACs target.
``params`` counts every parameter, trainable or not (the DFL conv included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def as_dict(self) -> dict:
        return {**asdict(self), "flops": self.flops}


class _Forwarded(nn.Module):
    """``model`` run through an adapter's ``forward_fn``, for counters that call ``module(inputs)``."""

    def __init__(self, model: nn.Module, forward_fn) -> None:
        super().__init__()
        self.model = model
        self.forward_fn = forward_fn

    def forward(self, example_inputs):
        return self.forward_fn(self.model, example_inputs)


def measure(model: nn.Module, example_inputs: torch.Tensor, forward_fn=None) -> Cost:
    """Count ``model``'s parameters and MACs on ``example_inputs``; the model is left as it was.

    ``forward_fn(model, inputs)``, when an adapter gives one, replaces ``model(inputs)``.
    """
    from torch_pruning.utils import count_ops_and_params

    was_training = model.training
    counted = model if forward_fn is None else _Forwarded(model, forward_fn)
    try:
        with torch.no_grad():
            macs, params = count_ops_and_params(counted, example_inputs)
    finally:
        model.train(was_training)  # the counter runs a deep copy in eval mode; keep the caller's mode
    return Cost(params=int(params), macs=int(round(macs)))


def format_count(value: float) -> str:
    """``3151904`` -> ``'3.15M'``, ``8.7e9`` -> ``'8.70G'``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


# --- predicting the cost of a candidate, without cutting ------------------------------------
#
# A target search tries dozens of candidates; pruning a copy for each would cost a graph
# trace and a forward pass every time. Every priced module call was recorded during the
# graph trace (``groups.CallRecord``), and every group lists the channels it removes from each
# node, so the cost of a candidate follows from channel counts alone. ``tests/test_pruning_flops``
# checks the prediction against ``measure`` on pruned models: they agree exactly.


ROOT_TYPES_PRICED = (nn.modules.conv._ConvNd, nn.Linear)  # what a latency table times per layer


def _conv_macs(module: nn.modules.conv._ConvNd, out_shape, c_in: int, c_out: int, groups: int) -> int:
    active = out_shape[0] * int(np.prod(out_shape[2:]))
    macs = int(np.prod(module.kernel_size)) * c_in * (c_out // groups) * active
    return macs + (c_out * active if module.bias is not None else 0)


def _conv_params(module: nn.modules.conv._ConvNd, c_in: int, c_out: int, groups: int) -> int:
    return int(np.prod(module.kernel_size)) * (c_in // groups) * c_out + (c_out if module.bias is not None else 0)


def _is_depthwise(module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels > 1


def _tp_call_cost(call) -> int:
    """Torch-Pruning's own price of one recorded call, recomputed from shapes."""
    m, s_in, s_out = call.module, call.input_shape, call.output_shape
    if isinstance(m, nn.modules.conv._ConvNd):
        return _conv_macs(m, s_out, m.in_channels, m.out_channels, m.groups)
    if isinstance(m, nn.Linear):
        return int(np.prod(s_in)) * s_out[-1] + (s_out[-1] if m.bias is not None else 0)
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)):
        return int(np.prod(s_in)) * (2 if m.affine else 1)
    if isinstance(m, nn.LayerNorm):
        return int(np.prod(s_in)) * (2 if m.elementwise_affine else 1)
    if isinstance(m, nn.Upsample):
        return int(np.prod(s_out[1:]))  # Torch-Pruning prices one image of the output
    if isinstance(m, (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU)):
        return int(np.prod(s_out))
    if "Pool" in type(m).__name__:
        return int(np.prod(s_in))
    return -1  # priced by a rule this model does not mirror (RNN, attention): treated as fixed


class CostModel:
    """Predicts params and MACs after removing, from each group, its first ``n`` positions of an order.

    ``orders[g]`` is group ``g``'s prunable positions in the order they would be removed;
    :meth:`predict` takes ``{group index: n}``.
    """

    def __init__(self, coupled, base: Cost, orders: dict[int, np.ndarray]):
        self.base = base
        self.batch_size = coupled.batch_size
        # (node, side) -> [(group index, cumulative removed count along the order)]
        self._removals: dict[tuple[int, str], list[tuple[int, np.ndarray]]] = {}
        touched: dict[int, object] = {}
        for g in coupled.groups:
            order = orders.get(g.index)
            if order is None or not len(order):
                continue
            for t in g.touches:
                cum = _cumulative_distinct(order, t.positions, t.channels)
                if cum[-1] == 0:
                    continue
                self._removals.setdefault((id(t.node), t.side), []).append((g.index, cum))
                touched[id(t.node)] = t.node
        self._calls = [c for c in coupled.calls if c.node is not None and id(c.node) in touched]
        self._call_base = [_tp_call_cost(c) for c in self._calls]
        # widths now: the model is cut later, and predictions must not read the cut layers
        self._call_shape = [self._shape_of(c.node) for c in self._calls]
        seen: set[int] = set()
        self._numel = {
            id(node): node.module.numel() for node in touched.values() if isinstance(node.module, nn.Parameter)
        }
        self._param_nodes = []
        for node in touched.values():
            key = id(node.module)
            if key not in seen:
                seen.add(key)
                shape = self._shape_of(node)
                own = [] if not isinstance(node.module, nn.Module) else [
                    (p.numel(), shape[1] in p.shape) for p in node.module.parameters(recurse=False)
                ]
                self._param_nodes.append((node, shape, own))
        self._param_base = sum(self._node_params(*entry, 0, 0) for entry in self._param_nodes)
        self._macs_base = sum(c for c in self._call_base if c >= 0)
        self._local_cache: dict[int, tuple[list[int], list[int]]] = {}

    @staticmethod
    def _shape_of(node) -> tuple[int, int]:
        """A node's (input, output) channels before pruning."""
        m = node.module
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels, m.out_channels
        if isinstance(m, nn.Linear):
            return m.in_features, m.out_features
        if isinstance(m, nn.Parameter):
            return (m.shape[node.pruning_dim],) * 2
        if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
            return m.num_features, m.num_features
        if isinstance(m, nn.GroupNorm):
            return m.num_channels, m.num_channels
        if isinstance(m, nn.LayerNorm):
            return m.normalized_shape[-1], m.normalized_shape[-1]
        return 0, 0

    def _removed(self, node, side: str, n: dict[int, int]) -> int:
        return sum(int(cum[min(n.get(g, 0), len(cum) - 1)]) for g, cum in self._removals.get((id(node), side), ()))

    def _node_params(self, node, shape, own, r_in: int, r_out: int) -> int:
        m = node.module
        c_in, c_out = shape
        if isinstance(m, nn.modules.conv._ConvNd):
            if _is_depthwise(m):
                c = c_out - r_out
                return _conv_params(m, c, c, c)
            return _conv_params(m, c_in - r_in, c_out - r_out, m.groups)
        if isinstance(m, nn.Linear):
            return (c_in - r_in) * (c_out - r_out) + ((c_out - r_out) if m.bias is not None else 0)
        if isinstance(m, nn.Parameter):
            return self._numel[id(node)] // c_out * (c_out - r_out)
        if c_out:  # norms, PReLU: per-channel vectors shrink, anything else stays
            return sum(numel // c_out * (c_out - r_out) if scales else numel for numel, scales in own)
        return 0

    def predict(self, n: dict[int, int]) -> Cost:
        params = self.base.params - self._param_base
        for node, shape, own in self._param_nodes:
            params += self._node_params(node, shape, own, self._removed(node, "in", n), self._removed(node, "out", n))
        macs_sum = -self._macs_base
        for call, base, shape in zip(self._calls, self._call_base, self._call_shape):
            if base < 0:
                continue
            macs_sum += self._call_cost(call, base, shape, n)
        return Cost(params=int(params), macs=int(round(self.base.macs + macs_sum / self.batch_size)))

    # --- the change one group makes, priced on the nodes it touches only (for greedy allocations) ---

    def _local(self, group: int) -> tuple[list[int], list[int]]:
        """Indices of the calls and parameter nodes whose price depends on ``group``'s count."""
        cache = self._local_cache
        if group not in cache:
            nodes = {key[0] for key, entries in self._removals.items() if any(g == group for g, _ in entries)}
            calls = [i for i, c in enumerate(self._calls) if id(c.node) in nodes and self._call_base[i] >= 0]
            params = [i for i, (node, _, _) in enumerate(self._param_nodes) if id(node) in nodes]
            cache[group] = (calls, params)
        return cache[group]

    def neighbours(self, group: int) -> set[int]:
        """Groups whose :meth:`change` may move when ``group``'s count does (they share a node); itself included."""
        nodes = {key for key, entries in self._removals.items() if any(g == group for g, _ in entries)}
        return {group} | {g for key in nodes for g, _ in self._removals[key]}

    def change(self, n: dict[int, int], group: int, count: int) -> tuple[int, float]:
        """(params, MACs) after minus before, when ``group`` goes from ``n[group]`` to ``count`` removed."""
        calls, params = self._local(group)
        moved = {**n, group: count}
        d_params = 0
        for i in params:
            node, shape, own = self._param_nodes[i]
            d_params += self._node_params(
                node, shape, own, self._removed(node, "in", moved), self._removed(node, "out", moved)
            )
            d_params -= self._node_params(node, shape, own, self._removed(node, "in", n), self._removed(node, "out", n))
        d_macs = 0
        for i in calls:
            call, base, shape = self._calls[i], self._call_base[i], self._call_shape[i]
            d_macs += self._call_cost(call, base, shape, moved) - self._call_cost(call, base, shape, n)
        return d_params, d_macs / self.batch_size

    def layer_widths(self, n: dict[int, int], group: int | None = None) -> list[tuple[object, int, int]]:
        """(call, input channels, output channels) of every conv/linear call a group touches, after
        removal ``n``; with ``group``, only the calls whose widths that group's count moves.
        A measured latency table prices these (:mod:`detprune.pruning.latency_table`)."""
        indices = self._local(group)[0] if group is not None else range(len(self._calls))
        out = []
        for i in indices:
            call = self._calls[i]
            if not isinstance(call.module, ROOT_TYPES_PRICED):
                continue
            c_in, c_out = self._call_shape[i]
            r_out = self._removed(call.node, "out", n)
            if _is_depthwise(call.module):
                out.append((call, c_out - r_out, c_out - r_out))
            else:
                out.append((call, c_in - self._removed(call.node, "in", n), c_out - r_out))
        return out

    def _call_cost(self, call, base: int, shape: tuple[int, int], n: dict[int, int]) -> int:
        m, node = call.module, call.node
        c_in, c_out = shape
        r_out = self._removed(node, "out", n)
        if isinstance(m, nn.modules.conv._ConvNd):
            if _is_depthwise(m):
                c = c_out - r_out
                return _conv_macs(m, call.output_shape, c, c, c)
            return _conv_macs(m, call.output_shape, c_in - self._removed(node, "in", n), c_out - r_out, m.groups)
        if isinstance(m, nn.Linear):
            lead = int(np.prod(call.input_shape[:-1]))
            c_out -= r_out
            return lead * (c_in - self._removed(node, "in", n)) * c_out + (c_out if m.bias is not None else 0)
        channels = call.input_shape[1] if len(call.input_shape) > 1 else call.input_shape[0]
        return base // channels * (channels - r_out)  # element-wise work: proportional to the channels


def _cumulative_distinct(order: np.ndarray, positions: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """``out[k]``: how many distinct ``channels`` the first ``k`` positions of ``order`` reach."""
    by_position: dict[int, list[int]] = {}
    for p, c in zip(positions.tolist(), channels.tolist()):
        by_position.setdefault(p, []).append(c)
    seen: set[int] = set()
    out = np.zeros(len(order) + 1, dtype=np.int64)
    for k, p in enumerate(order.tolist(), start=1):
        seen.update(by_position.get(p, ()))
        out[k] = len(seen)
    return out
