"""The compiled core's stubs (.pyi) declare its whole public API, and both implementations
(the Cython modules and the pure-Python twin) have exactly that API: the same names, the
same kinds (function, class, property, constant) and the same parameters. mypy types every
caller of ``handoff._core`` through these stubs, so a stub that drifted from the code would
let a wrong call type-check."""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from pathlib import Path

import pytest

from handoff import _core

CORE_DIR = Path(_core.__file__).parent
MODULES = ("graph", "ledger", "allocator")
PLAIN = "POSITIONAL_OR_KEYWORD"

# a callable's parameters as (name, kind as inspect names it, has a default)
Params = list[tuple[str, str, bool]]


def _stub_params(fn: ast.FunctionDef) -> Params:
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    first_default = len(positional) - len(a.defaults)
    out = [
        (p.arg, "POSITIONAL_ONLY" if k < len(a.posonlyargs) else PLAIN, k >= first_default)
        for k, p in enumerate(positional)
    ]
    if a.vararg is not None:
        out.append((a.vararg.arg, "VAR_POSITIONAL", False))
    out += [(p.arg, "KEYWORD_ONLY", d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg is not None:
        out.append((a.kwarg.arg, "VAR_KEYWORD", False))
    return out


def _runtime_params(fn: object) -> Params:
    return [
        (p.name, p.kind.name, p.default is not inspect.Parameter.empty)
        for p in inspect.signature(fn).parameters.values()
    ]


def _is_property(node: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)


def _is_type_alias(node: ast.stmt) -> bool:
    """``X: TypeAlias = ...`` or ``X = ...``: names for the checker, not runtime API."""
    if isinstance(node, ast.Assign):
        return True
    return isinstance(node, ast.AnnAssign) and "TypeAlias" in ast.unparse(node.annotation)


def stub_api(module: str) -> dict[str, object]:
    """Public names of ``<module>.pyi``: a function's parameters, a class's members
    (``"property"`` or their parameters), or ``"constant"``."""
    tree = ast.parse((CORE_DIR / f"{module}.pyi").read_text())
    api: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            api[node.name] = _stub_params(node)
        elif isinstance(node, ast.ClassDef):
            api[node.name] = {
                m.name: "property" if _is_property(m) else _stub_params(m)
                for m in node.body
                if isinstance(m, ast.FunctionDef)
            }
        elif isinstance(node, ast.AnnAssign) and not _is_type_alias(node):
            assert isinstance(node.target, ast.Name)
            api[node.target.id] = "constant"
    return api


def all_stubs() -> dict[str, object]:
    api: dict[str, object] = {}
    for module in MODULES:
        api.update(stub_api(module))
    return api


def _public_members(cls: type) -> set[str]:
    return {
        name
        for klass in cls.__mro__
        if klass is not object
        for name in vars(klass)
        if not name.startswith("_")
    }


def check_against_stub(name: str, stub: object, value: object, compiled: bool) -> list[str]:
    """How ``value`` differs from its stub (an empty list when they agree)."""
    if stub == "constant":
        ok = isinstance(value, tuple) and all(isinstance(s, str) for s in value)
        return [] if ok else [f"{name}: not a tuple of str"]
    if isinstance(stub, dict):
        if not isinstance(value, type):
            return [f"{name}: not a class"]
        declared = {m for m in stub if not m.startswith("_")}
        actual = _public_members(value)
        problems = [f"{name}.{m}: missing from the stub" for m in sorted(actual - declared)]
        problems += [f"{name}.{m}: in the stub, not in the class" for m in sorted(declared - actual)]
        for member, kind in stub.items():
            attr = inspect.getattr_static(value, member, None)
            if kind == "property":
                if not isinstance(attr, (property, types.GetSetDescriptorType)):
                    problems.append(f"{name}.{member}: not a property")
            elif member == "__init__" and compiled:
                continue  # a cdef class's __init__ has no signature to read; the twin's is checked
            elif attr is None or isinstance(attr, (property, types.GetSetDescriptorType)):
                problems.append(f"{name}.{member}: not a method")
            elif _runtime_params(getattr(value, member)) != kind:
                params = _runtime_params(getattr(value, member))
                problems.append(f"{name}.{member}: parameters {params} != stub {kind}")
        return problems
    if not callable(value):
        return [f"{name}: not callable"]
    params = _runtime_params(value)
    return [] if params == stub else [f"{name}: parameters {params} != stub {stub}"]


def test_the_stubs_declare_the_whole_api():
    assert set(all_stubs()) == set(_core.API)


@pytest.mark.parametrize("module", MODULES)
def test_each_compiled_module_has_what_its_stub_declares_and_nothing_more(module):
    if "cython" not in _core.implementations():
        pytest.fail(_core.NOT_BUILT)
    mod = importlib.import_module(f"handoff._core.{module}")
    public = {
        name for name, value in vars(mod).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(stub_api(module))


def test_both_implementations_match_the_stubs(core):
    problems = []
    for name, stub in all_stubs().items():
        problems += check_against_stub(name, stub, getattr(core, name), core.name == "cython")
    assert problems == []


def test_a_drifted_stub_is_caught():
    """Positive control: the comparison sees a renamed parameter, a member the stub lacks,
    and a property declared as a method."""
    twin = _core.implementations()["python"]
    stubs = all_stubs()
    renamed = [("ledger", PLAIN, False), ("requests", PLAIN, False), ("pinned", PLAIN, False),
               ("strategy", PLAIN, False), ("claim", PLAIN, True)]
    assert check_against_stub("allocate", renamed, twin.allocate, False)
    assert check_against_stub("allocate", stubs["allocate"], twin.allocate, False) == []
    ledger_stub = dict(stubs["ResourceLedger"])
    del ledger_stub["free"]
    assert check_against_stub("ResourceLedger", ledger_stub, twin.ResourceLedger, False) == [
        "ResourceLedger.free: missing from the stub"
    ]
    ledger_stub = dict(stubs["ResourceLedger"])
    ledger_stub["nodes"] = [("self", PLAIN, False)]
    assert check_against_stub("ResourceLedger", ledger_stub, twin.ResourceLedger, False) == [
        "ResourceLedger.nodes: not a method"
    ]
