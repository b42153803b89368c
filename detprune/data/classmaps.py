"""Named class sets, so that results compare with the literature's.

A :class:`ClassMap` turns a source's raw class name (KITTI's ``type`` field) into a label and an
``ignore`` flag, or drops the object. The named maps:

``kitti3``
    KITTI's official 2D protocol: Car, Pedestrian, Cyclist. Van is kept as an ignore box with the
    Car label and Person_sitting as an ignore box with the Pedestrian label, so that detecting
    them is neither rewarded nor punished; Truck, Tram and Misc are dropped; DontCare is a
    class-less ignore region (Geiger et al., CVPR 2012, devkit ``evaluate_object``).
``kitti3-merged``
    The 3-class set of saliency-guided pruning (Choi and Tian, IV 2023, arXiv:2303.02512):
    car = Car + Van + Tram + Truck, pedestrian, cyclist; Person_sitting and Misc dropped,
    DontCare an ignore region.
``kitti8``
    All eight KITTI classes, DontCare an ignore region.

:data:`COCO_TRAFFIC` is the same paper's 8 COCO categories.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

from detprune.errors import BadInputError

KITTI_CLASSES: tuple[str, ...] = (
    "Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc",
)
DONT_CARE = "DontCare"
# Van, Truck and Tram merged into one class by public copies of KITTI (kitti_2k): the devkit's
# neighbour rule can then only treat the whole merged class as Van, an ignore box of Car.
OTHER_VEHICLE = "OtherVehicle"
KITTI_TYPES: frozenset[str] = frozenset(KITTI_CLASSES + (DONT_CARE, OTHER_VEHICLE))

COCO_TRAFFIC: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light", "stop sign",
)

IGNORE_REGION = -1  # label of a box that belongs to no class


@dataclass(frozen=True)
class Rule:
    """What a raw class becomes: a label (``-1`` = class-less) and whether it is an ignore box."""

    label: int
    ignore: bool = False


@dataclass(frozen=True)
class ClassMap:
    """Raw class name -> :class:`Rule`; names in ``known`` without a rule are dropped."""

    name: str
    class_names: tuple[str, ...]
    rules: Mapping[str, Rule]
    known: frozenset[str]

    def lookup(self, raw: str) -> Rule | None:
        """The rule for ``raw``; None to drop it. Raises KeyError for a name the map does not know."""
        rule = self.rules.get(raw)
        if rule is None and raw not in self.known:
            raise KeyError(raw)
        return rule


def _kitti_map(name: str, class_names: tuple[str, ...], objects: dict[str, str], ignored: dict[str, str]) -> ClassMap:
    index = {c: i for i, c in enumerate(class_names)}
    rules = {raw: Rule(index[target]) for raw, target in objects.items()}
    rules.update({raw: Rule(index[target], ignore=True) for raw, target in ignored.items()})
    rules[DONT_CARE] = Rule(IGNORE_REGION, ignore=True)
    # a map that cannot split the merged class back (kitti8) makes it a class-less ignore region
    rules.setdefault(OTHER_VEHICLE, Rule(IGNORE_REGION, ignore=True))
    return ClassMap(name, class_names, rules, KITTI_TYPES)


NAMED_MAPS: dict[str, ClassMap] = {
    "kitti3": _kitti_map(
        "kitti3",
        ("Car", "Pedestrian", "Cyclist"),
        {"Car": "Car", "Pedestrian": "Pedestrian", "Cyclist": "Cyclist"},
        {"Van": "Car", OTHER_VEHICLE: "Car", "Person_sitting": "Pedestrian"},
    ),
    "kitti3-merged": _kitti_map(
        "kitti3-merged",
        ("car", "pedestrian", "cyclist"),
        {"Car": "car", "Van": "car", "Tram": "car", "Truck": "car", OTHER_VEHICLE: "car", "Pedestrian": "pedestrian",
         "Cyclist": "cyclist"},
        {},
    ),
    "kitti8": _kitti_map("kitti8", KITTI_CLASSES, {c: c for c in KITTI_CLASSES}, {}),
}

ClassMapSpec = Union[str, Mapping[str, Union[str, None]], ClassMap]


def get_class_map(spec: ClassMapSpec) -> ClassMap:
    """A named map (``"kitti3"``, ``"kitti3-merged"``, ``"kitti8"``), a ClassMap, or a dict.

    A dict maps raw names to a class name (classes are numbered in order of first appearance),
    to ``None`` (drop) or to ``"ignore"`` (class-less ignore region). KITTI names it does not
    list are dropped, except DontCare, which stays an ignore region unless listed.
    """
    if isinstance(spec, ClassMap):
        return spec
    if isinstance(spec, str):
        if spec not in NAMED_MAPS:
            raise BadInputError(f"unknown class map '{spec}'; choose one of {', '.join(NAMED_MAPS)} or pass a dict")
        return NAMED_MAPS[spec]
    if isinstance(spec, Mapping):
        class_names: list[str] = []
        rules: dict[str, Rule] = {DONT_CARE: Rule(IGNORE_REGION, ignore=True)}
        for raw, target in spec.items():
            if target is None:
                rules.pop(raw, None)
            elif target == "ignore":
                rules[raw] = Rule(IGNORE_REGION, ignore=True)
            elif isinstance(target, str):
                if target not in class_names:
                    class_names.append(target)
                rules[raw] = Rule(class_names.index(target))
            else:
                raise BadInputError(f"class map entry {raw!r}: expected a class name, None or 'ignore', got {target!r}")
        if not class_names:
            raise BadInputError("class map maps no raw class to a class")
        return ClassMap("custom", tuple(class_names), rules, KITTI_TYPES | frozenset(spec))
    raise BadInputError(f"class map must be a name, a dict or a ClassMap, got {type(spec).__name__}")
