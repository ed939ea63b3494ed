"""Exception types of alz-monai.

Input problems are collected and raised together so that a user fixes a dataset in one pass instead of
discovering its problems one run at a time.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_HINT = "Fix or remove the entries listed above, then run again."


class DataError(ValueError):
    """One or more problems with input data; the message lists every problem, one per line."""

    def __init__(self, problems: Iterable[str], source: str = "the input data", hint: str = DEFAULT_HINT) -> None:
        self.problems = list(problems)
        self.source = source
        self.hint = hint
        count = len(self.problems)
        header = f"{count} problem{'' if count == 1 else 's'} in {source}:"
        super().__init__("\n".join([header, *(f"  - {problem}" for problem in self.problems), hint]))


class LeakageError(DataError):
    """A participant appears in more than one split, so evaluation scores would be inflated."""
