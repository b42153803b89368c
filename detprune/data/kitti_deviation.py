"""The phrase that says how a KITTI copy's labels depart from the devkit's, e.g. the public copy
that merged Van, Truck and Tram into ``OtherVehicle`` and dropped every ``DontCare`` line.

It is decided from the label types one read met, so every subset of that read carries it.
"""

from __future__ import annotations

from typing import Mapping

from detprune.data.classmaps import DONT_CARE, OTHER_VEHICLE, ClassMap

MERGED = f"{OTHER_VEHICLE} (merged Van/Truck/Tram)"


def kitti_deviation(type_counts: Mapping[str, int], cmap: ClassMap) -> str:
    """"" for labels as KITTI writes them; else the departures, joined by "; "."""
    parts = []
    if type_counts.get(OTHER_VEHICLE):
        rule = cmap.rules.get(OTHER_VEHICLE)
        if rule is None:
            parts.append(f"{MERGED} dropped")
        elif rule.label < 0:
            parts.append(f"{MERGED} a class-less ignore region")
        elif rule.ignore:  # the devkit's Van rule, now applied to Truck and Tram too
            parts.append(f"{MERGED} ignored for {cmap.class_names[rule.label]}")
        else:
            parts.append(f"{MERGED} counted as {cmap.class_names[rule.label]}")
    if sum(type_counts.values()) and not type_counts.get(DONT_CARE):
        # detections where KITTI would have a DontCare region count as false positives
        parts.append("no DontCare regions")
    return "; ".join(parts)
