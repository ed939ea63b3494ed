"""Exception types of alz-monai.

Input problems are collected and raised together so that a user fixes a dataset in one pass instead of
discovering its problems one run at a time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from types import TracebackType

DEFAULT_HINT = "Fix or remove the entries listed above, then run again."
TRACEBACK_VARIABLE = "ALZ_MONAI_TRACEBACK"


class AlzMonaiError(Exception):
    """Base of the errors a user can fix (data, configuration, run folder): reported without a traceback."""


class ConfigError(AlzMonaiError, ValueError):
    """A configuration value is invalid; the message names the key and the valid choices."""


class DataError(AlzMonaiError, ValueError):
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


def find_user_error(error: BaseException | None) -> AlzMonaiError | None:
    """The first :class:`AlzMonaiError` in an exception's chain (MONAI's config parser wraps what we raise)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, AlzMonaiError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def install_concise_errors() -> None:
    """Report user errors as one clear message instead of a traceback from deep inside MONAI's config parser.

    Anything else keeps its full traceback; ``ALZ_MONAI_TRACEBACK=1`` shows it for user errors too.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        user_error = find_user_error(error)
        if user_error is None or os.environ.get(TRACEBACK_VARIABLE):
            previous(kind, error, traceback)
            return
        print(f"alz-monai: {user_error}\n(set {TRACEBACK_VARIABLE}=1 for the traceback)", file=sys.stderr)

    sys.excepthook = hook
