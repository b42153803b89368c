"""Channel-importance criteria behind one interface, and their registry."""

from detprune.criteria.base import Criterion, available_criteria, criterion_class, get_criterion, register_criterion

__all__ = ["Criterion", "available_criteria", "criterion_class", "get_criterion", "register_criterion"]
