"""Recipe dates: YAML turns an unquoted ``2021-06-01`` into a date; options keep ISO strings."""

from __future__ import annotations

import datetime as _dt
from typing import Any


def iso_date(value: Any) -> Any:
    return value.isoformat() if isinstance(value, (_dt.date, _dt.datetime)) else value
