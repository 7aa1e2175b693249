"""One test for a module's table of bad inputs: each is refused with the documented exception
and a message saying what was wrong (the tables differ by module, the test does not)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

BadInput = tuple[Callable[[], object], type[Exception], str]
"""``(call, exception, message pattern)``: ``call()`` raises ``exception``, its message
matching the pattern."""


def bad_input_test(cases: Mapping[str, BadInput]) -> Callable[[str], None]:
    """The test parametrised over ``cases`` (by name): bind it to a ``test_`` name."""

    @pytest.mark.parametrize("case", sorted(cases))
    def test_bad_input_gets_a_clear_error(case: str) -> None:
        """Each bad input raises the documented exception with a message naming the argument,
        what was wrong and what is allowed."""
        call, error, message = cases[case]
        with pytest.raises(error, match=message):
            call()

    return test_bad_input_gets_a_clear_error
