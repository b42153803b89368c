"""A width supernet over a detector's coupled channel groups (PSE-Net, Wang et al., arXiv:2408.16233).

Every prunable group (:mod:`detprune.pruning.groups`) may run at a choice of widths. The
group's channels are ordered by a criterion, most important first, so a width is a prefix
of that order (locked positions always stay): a *subnet* is one width index per group.

A subnet runs without cutting anything: forward hooks multiply a channel mask into the
OUTPUT of every conv and every normalisation layer that carries a group's channels. Masking
after the norm is what makes a channel inert (the norm's shift would otherwise revive it),
and SiLU(0) = ReLU(0) = 0, so consumers read zeros exactly where the cut model has no
channel. With the norms in eval mode the masked supernet computes what
``prune_model(kept=space.to_kept(subnet))`` makes of a copy, to float tolerance
(``tests/test_supernet.py`` checks it). Masks are per sample: slice ``s`` of a batch may
carry subnet ``s``, so one forward and backward serves several subnets (PSE-Net's parallel
subnets).

The cost of a subnet comes from the pruner's analytic cost model
(:class:`detprune.pruning.flops.CostModel`), exact and without a cut.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.errors import BadInputError, DetpruneError
from detprune.pruning.allocation import Limits, group_scores, removal_orders
from detprune.pruning.flops import Cost, CostModel, measure
from detprune.pruning.groups import enumerate_groups
from detprune.pruning.pruner import trace_forward

DEFAULT_WIDTH_CHOICES = 8
Subnet = tuple[int, ...]  # one width index per searchable group (index into its ``widths``)

_MASKED_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


@dataclass
class GroupChoice:
    """The widths one group may run at, and which positions each keeps."""

    group: int  # index in CoupledGroups.groups
    root: str
    size: int
    widths: np.ndarray  # ascending kept widths; the last is ``size``
    order: np.ndarray  # prunable positions, least important first (removed first)

    def kept_positions(self, choice: int) -> np.ndarray:
        """Boolean per position: kept at width ``widths[choice]``."""
        keep = np.ones(self.size, dtype=bool)
        keep[self.order[: self.size - int(self.widths[choice])]] = False
        return keep


def thin(widths: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` widths, evenly spread over ``widths`` (ascending); both ends always kept."""
    if count < 2:
        raise BadInputError(f"need at least 2 width choices per group, got {count}")
    if len(widths) <= count:
        return widths
    picks = np.unique(np.round(np.linspace(0, len(widths) - 1, count)).astype(np.int64))
    return widths[picks]


class WidthSpace:
    """The searchable groups of a prepared model, their widths, and what a subnet costs and keeps.

    ``scores``: {conv name: per-channel scores} of a criterion; they fix each group's channel
    order. Groups with a single allowed width (all locked, or too narrow for the limits) are
    left out of the space and always run whole.
    """

    def __init__(
        self,
        adapter: DetectorAdapter,
        model: nn.Module,
        scores: Mapping[str, torch.Tensor],
        *,
        imgsz: int | Sequence[int] = 320,
        width_choices: int = DEFAULT_WIDTH_CHOICES,
        limits: Limits = Limits(),
        normalisation: str = "l2",
    ):
        self.imgsz = imgsz
        self.limits = limits
        example = adapter.example_inputs(model, imgsz)
        forward_fn = trace_forward(adapter, model)
        self.base = measure(model, example, forward_fn)
        self.coupled = enumerate_groups(model, example, adapter.protected_layers(model), forward_fn)
        orders = removal_orders(self.coupled, group_scores(self.coupled, scores, normalisation))
        self.cost_model = CostModel(self.coupled, self.base, orders)
        self.choices: list[GroupChoice] = []
        self._flops: dict[Subnet, float] = {}
        for g in self.coupled.groups:
            order = orders[g.index]
            widths = thin(limits.allowed_kept(g.size, len(order)), width_choices)
            if len(widths) > 1:
                self.choices.append(GroupChoice(g.index, g.root, g.size, widths, order))
        if not self.choices:
            raise DetpruneError("no group of this model can change width under the limits; nothing to search")

    # --- subnets ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.choices)

    @property
    def options(self) -> list[int]:
        """Number of width choices per group."""
        return [len(c.widths) for c in self.choices]

    def largest(self) -> Subnet:
        return tuple(len(c.widths) - 1 for c in self.choices)

    def smallest(self) -> Subnet:
        return (0,) * len(self.choices)

    def check(self, subnet: Sequence[int]) -> Subnet:
        subnet = tuple(int(i) for i in subnet)
        if len(subnet) != len(self.choices) or any(not 0 <= i < n for i, n in zip(subnet, self.options)):
            raise BadInputError(
                f"a subnet needs one width index per group ({len(self.choices)} groups) within its choices"
            )
        return subnet

    def widths(self, subnet: Sequence[int]) -> dict[str, int]:
        """{group root: kept width}."""
        return {c.root: int(c.widths[i]) for c, i in zip(self.choices, self.check(subnet))}

    def from_widths(self, widths: Mapping[str, int]) -> Subnet:
        """The subnet of {group root: width} (as :meth:`widths` writes); missing groups run whole."""
        out = []
        for c in self.choices:
            width = int(widths.get(c.root, c.size))
            hit = np.flatnonzero(c.widths == width)
            if not len(hit):
                raise BadInputError(f"group {c.root} has no width choice {width} (choices {c.widths.tolist()})")
            out.append(int(hit[0]))
        return tuple(out)

    def removal(self, subnet: Sequence[int]) -> dict[int, int]:
        """{group index: channels removed}, the cost model's input."""
        return {
            c.group: c.size - int(c.widths[i]) for c, i in zip(self.choices, self.check(subnet)) if c.widths[i] < c.size
        }

    def cost(self, subnet: Sequence[int]) -> Cost:
        return self.cost_model.predict(self.removal(subnet))

    def flops_fraction(self, subnet: Sequence[int]) -> float:
        key = tuple(int(i) for i in subnet)
        if key not in self._flops:
            if len(self._flops) > 100_000:  # a search sees far fewer; bound the memory anyway
                self._flops.clear()
            self._flops[key] = self.cost(key).macs / self.base.macs
        return self._flops[key]

    def kept_positions(self, subnet: Sequence[int]) -> dict[int, np.ndarray]:
        """{group index: bool per position}, for the searchable groups."""
        return {c.group: c.kept_positions(i) for c, i in zip(self.choices, self.check(subnet))}

    def to_kept(self, subnet: Sequence[int]) -> dict[str, list[int]]:
        """{conv name: output channels kept} for ``prune_model(kept=...)``: the real cut of ``subnet``.

        A layer whose output channels lie in several groups keeps the union of what each keeps;
        only layers of groups that lose channels are named.
        """
        keep = self.kept_positions(subnet)
        cut = {g for g, k in keep.items() if not k.all()}
        kept: dict[str, set[int]] = {}
        named: set[str] = set()
        for g in self.coupled.groups:
            positions = keep.get(g.index, np.ones(g.size, dtype=bool))
            for m in g.members:
                kept.setdefault(m.name, set()).update(m.channels[positions[m.positions]].tolist())
                if g.index in cut:
                    named.add(m.name)
        return {name: sorted(kept[name]) for name in kept if name in named}


class ChannelMasks:
    """Forward hooks that silence the channels a subnet drops, per sample.

    For every conv / norm a group carries as output channels, ``_entries`` lists
    (choice index, channels, positions): the module's channel ``c`` is kept when every
    position mapping to it is kept (the cut removes a channel when any of its positions goes).
    """

    def __init__(self, space: WidthSpace):
        self.space = space
        searchable = {c.group: k for k, c in enumerate(space.choices)}
        self._modules: dict[int, nn.Module] = {}
        self._width: dict[int, int] = {}
        self._entries: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for g in space.coupled.groups:
            if g.index not in searchable:
                continue
            for t in g.touches:
                module = t.node.module
                if t.side != "out" or not isinstance(module, _MASKED_TYPES):
                    continue
                self._modules[id(module)] = module
                self._width[id(module)] = _out_width(module)
                self._entries.setdefault(id(module), []).append((searchable[g.index], t.channels, t.positions))
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._masks: dict[int, torch.Tensor] = {}
        self._broadcast = True
        self._cache: dict[Subnet, dict[int, np.ndarray]] = {}

    def module_masks(self, subnet: Subnet) -> dict[int, np.ndarray]:
        """{id(module): float mask per output channel} for one subnet (cached)."""
        if subnet in self._cache:
            return self._cache[subnet]
        keep = [c.kept_positions(i) for c, i in zip(self.space.choices, subnet)]
        out = {}
        for key, entries in self._entries.items():
            mask = np.ones(self._width[key], dtype=np.float32)
            for k, channels, positions in entries:
                np.minimum.at(mask, channels, keep[k][positions].astype(np.float32))
            out[key] = mask
        if len(self._cache) < 4096:
            self._cache[subnet] = out
        return out

    def set(self, subnets: Sequence[Subnet], counts: Sequence[int] | None = None, device=None) -> None:
        """Samples ``[sum(counts[:s]), sum(counts[:s+1]))`` of the next batches run subnet ``s``.

        One subnet without ``counts`` applies to every sample of any batch.
        """
        subnets = [self.space.check(s) for s in subnets]
        if counts is None:
            if len(subnets) != 1:
                raise DetpruneError("several subnets need per-slice sample counts")
            counts = [1]
        if len(counts) != len(subnets) or min(counts) < 0:
            raise DetpruneError("give one non-negative sample count per subnet")
        per_subnet = [self.module_masks(s) for s in subnets]
        repeats = torch.as_tensor(list(counts))
        self._masks = {}
        for key in self._entries:
            stacked = torch.from_numpy(np.stack([m[key] for m in per_subnet]))
            rows = stacked.repeat_interleave(repeats, dim=0)
            self._masks[key] = rows[:, :, None, None].to(device) if device is not None else rows[:, :, None, None]
        self._broadcast = len(subnets) == 1

    def _hook(self, module: nn.Module, inputs, output):
        mask = self._masks.get(id(module))
        if mask is None or not isinstance(output, torch.Tensor):
            return None
        if output.dim() == 2:
            mask = mask[:, :, 0, 0]
        elif output.dim() != 4:
            mask = mask.reshape(mask.shape[0], mask.shape[1], *([1] * (output.dim() - 2)))
        if not self._broadcast and mask.shape[0] != output.shape[0]:
            raise DetpruneError(f"the masks cover {mask.shape[0]} samples; the batch has {output.shape[0]}")
        return output * mask.to(device=output.device, dtype=output.dtype)

    @contextlib.contextmanager
    def active(self) -> Iterator["ChannelMasks"]:
        """Hooks on while the block runs; set the subnets with :meth:`set` inside or before."""
        self._handles = [m.register_forward_hook(self._hook) for m in self._modules.values()]
        try:
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []


def _out_width(module: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features", "num_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    raise DetpruneError(f"cannot read the channel count of {type(module).__name__}")


@contextlib.contextmanager
def running(masks: ChannelMasks, subnet: Subnet, device=None) -> Iterator[None]:
    """Run every forward in the block as ``subnet`` (all samples); masks made on ``device``."""
    with masks.active():
        masks.set([subnet], device=device)
        yield
