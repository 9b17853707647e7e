"""The one exception type that means "the user asked for something we cannot do".

The CLI turns a :class:`UserError` into a single red sentence and exit code 2; anything else is a bug and
keeps its traceback. Library code raises it wherever the cause is the input (a name, a file, a shape, a
device), never for internal invariants.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input, phrased as one sentence that says what to do."""


class DiskFull(UserError):
    """A write failed for lack of space. Only the caller knows what survived (a training run adds whether
    its last checkpoint is kept), so the sentence says that part when it is re-raised."""


def did_you_mean(name: str, choices: Iterable[str], limit: int = 3) -> str:
    """A ' Did you mean ...?' suffix for unknown names, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=limit, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
