"""Line parser for children that print one JSON object per sweep row (engine, replay)."""
from __future__ import annotations

import json


def jsonl_rows(line: str) -> list[dict]:
    """A JSON row line -> [row]; anything else (blank, human text) -> []."""
    line = line.strip()
    if not line.startswith("{"):
        return []
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return []
    return [row] if isinstance(row, dict) and "speed_pp" in row else []
