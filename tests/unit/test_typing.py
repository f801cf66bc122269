"""A type checker sees through @handoff.fn: mypy --strict on a typed example and on one
that must fail with specific errors (tests/typing/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api

HERE = Path(__file__).resolve().parents[1] / "typing"


@pytest.mark.slow  # mypy reads numpy's stubs afresh: ~20 s on a loaded machine
def test_mypy_knows_the_types_of_refs(tmp_path):
    stdout, stderr, status = api.run([
        "--strict", "--no-error-summary", "--show-error-codes", "--cache-dir", str(tmp_path),
        "--python-version", "3.11", str(HERE / "typed_example.py"), str(HERE / "typed_errors.py"),
    ])
    assert not stderr, stderr
    errors = re.findall(r"^(.*?):(\d+): error: (.*)$", stdout, re.MULTILINE)
    assert not [e for e in errors if e[0].endswith("typed_example.py")], stdout
    source = (HERE / "typed_errors.py").read_text().splitlines()
    found = {source[int(line) - 1].split("#")[0].strip(): text
             for path, line, text in errors if path.endswith("typed_errors.py")}
    assert set(found) == {text.split("#")[0].strip() for text in source if "# E:" in text}, stdout
    assert 'expression has type "Ref[int]", variable has type "Ref[str]"' in \
        found['wrong_ref: Ref[str] = count("abc")']
    assert 'expression has type "int", variable has type "str"' in \
        found['wrong_value: str = handoff.run(count("abc"))']
    assert 'Argument 1 to "local" of "RemoteFunction" has incompatible type "int"; expected "str"' in \
        found["count.local(3)"]
    assert status == 1
