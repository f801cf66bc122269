"""Must fail mypy --strict with exactly the errors tests/unit/test_typing.py expects.

Never run.
"""

from __future__ import annotations

import handoff
from handoff import Ref


@handoff.fn
def count(text: str) -> int:
    return len(text)


wrong_ref: Ref[str] = count("abc")  # E: the ref holds an int
wrong_value: str = handoff.run(count("abc"))  # E: run gives the int
count.local(3)  # E: local checks the arguments
