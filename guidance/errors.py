"""The one exception type the toolkit raises for bad input.

Apps catch it and print its message as a single line (see guidance.apps.common.one_line_errors), so every
message must say what is wrong *and* what to do about it.
"""

import math


class GuidanceError(Exception):
    """A user-facing error: wrong config value, missing file, incompatible checkpoint, ..."""


def check_scale(value, what: str, allow_negative: bool = False) -> float:
    """A guidance scale as a float; non-finite or (where invalid) negative values are a GuidanceError."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise GuidanceError(f"{what} must be a number, got {value!r}; pass e.g. {what}=1.0") from None
    if not math.isfinite(value):
        raise GuidanceError(f"{what} must be finite, got {value}; pass a finite value such as {what}=1.0")
    if value < 0 and not allow_negative:
        raise GuidanceError(f"{what} must be >= 0 (0 = unguided), got {value}; pass a non-negative scale")
    return value
