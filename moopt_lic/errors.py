"""The one exception type for bad user input (files, folders, flag values).

The command-line tools print an [`InputError`][moopt_lic.InputError] as one line, without a
traceback, and exit with status 2; the Python API simply raises it (it is a
[`ValueError`](https://docs.python.org/3/library/exceptions.html#ValueError)).
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input from the user: the message names the file, folder or value and what is allowed."""
