"""Compact, readable JSON files: indented, with lists of numbers on one line."""

from __future__ import annotations

import json
import re


def compact_json(data) -> str:
    """Indented JSON with lists of numbers kept on one line (channel index lists are long)."""
    text = json.dumps(data, indent=2)
    return re.sub(r"\[[-\d.,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text) + "\n"
