"""Datasets in one internal form (:class:`~detprune.data.types.Sample`), and their readers,
writers, converters and the synthetic driving-scene generator."""

from detprune.data.types import DetectionSet, Detections, Sample

__all__ = ["DetectionSet", "Detections", "Sample"]
