"""The one exception type for errors a user can cause and fix (bad path, bad data, bad option).

Command-line entry points catch it and print its message as a single line with a non-zero exit;
anything else is a bug and keeps its traceback.
"""


class LeafnetError(Exception):
    """A user-facing error: the message names the culprit and, where there is one, the fix."""
