"""FunctionError by type (handoff.errors.remote_error): pure, no network."""

from __future__ import annotations

import pickle

import pytest

from handoff import FunctionError, HandoffError
from handoff.errors import PicklableException, remote_error


class NeedsTwo(Exception):
    def __init__(self, text: str, code: int):
        super().__init__(text)
        self.code = code


def make(cause: BaseException | None, exc_type: str = "X") -> FunctionError:
    return remote_error("f", "node1", 2, exc_type, str(cause), "Traceback ...\n", cause)


def test_a_builtin_error_is_caught_by_its_type():
    err = make(ValueError("bad"))
    with pytest.raises(ValueError):
        raise err
    assert isinstance(err, FunctionError) and isinstance(err, HandoffError)
    assert (err.function_id, err.node, err.attempts) == ("f", "node1", 2)
    assert isinstance(err.cause, ValueError) and err.__cause__ is err.cause
    assert "Remote traceback" in str(err) and "'f'" in str(err)


def test_the_typed_class_is_made_once():
    assert type(make(KeyError("a"))) is type(make(KeyError("b")))
    assert type(make(KeyError("a"))).__name__ == "FunctionError(KeyError)"


def test_attributes_of_the_original_are_kept_without_calling_its_init():
    err = make(NeedsTwo("text", 7))
    assert isinstance(err, NeedsTwo) and err.code == 7 and err.cause.code == 7


def test_os_errors_keep_errno():
    err = make(FileNotFoundError(2, "missing"))
    assert isinstance(err, FileNotFoundError) and isinstance(err, OSError)
    assert err.errno == 2


def test_not_an_exception_stays_a_plain_function_error():
    err = make(KeyboardInterrupt())
    assert type(err) is FunctionError and isinstance(err.cause, KeyboardInterrupt)


def test_no_cause_is_a_plain_function_error_that_names_the_type():
    err = remote_error("f", "n", 1, "NodeOnlyError", "gone", "", None)
    assert type(err) is FunctionError and err.exc_type == "NodeOnlyError" and err.cause is None
    assert "NodeOnlyError: gone" in str(err)


@pytest.mark.parametrize("cause", [ValueError("v"), NeedsTwo("t", 3), OSError(5, "io"), None])
def test_errors_pickle_with_their_type_and_cause(cause):
    err = make(cause)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert back.function_id == "f" and back.attempts == 2
    if cause is not None:
        assert type(back.cause) is type(cause) and back.cause.args == cause.args


def test_an_exception_whose_init_does_not_take_its_args_pickles():
    back = pickle.loads(pickle.dumps(PicklableException(NeedsTwo("t", 9))))
    assert isinstance(back, NeedsTwo) and back.code == 9 and back.args == ("t",)
