"""The one exception type the toolkit raises for bad input.

Apps catch it and print its message as a single line (see guidance.apps.common.one_line_errors), so every
message must say what is wrong *and* what to do about it.
"""


class GuidanceError(Exception):
    """A user-facing error: wrong config value, missing file, incompatible checkpoint, ..."""
