"""A DAG as a pipeline: its stages in topological order, each stage's call tree and blobs,
built (and every function pickled) in the caller's thread, so a bad DAG fails before any
replica starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

from handoff.dag import DAG, Argument, Collocated, Function
from handoff.errors import InvalidFunctionError, ValidationError
from handoff.node.runs import PayloadPickler
from handoff.protocol.rows import Leaf
from handoff.protocol.streams import StageArg, StageCall, StageHook, StageRow

__all__ = ["PipelineSpec", "build_spec"]


@dataclass(eq=False)
class PipelineSpec:
    """What a coordinator needs to open a pipeline: stages (inputs first among equals, in
    topological order), their blobs (indexed by each row's first/count), and the functions."""

    function_ids: list[Hashable]
    stages: list[StageRow]
    blobs: list[list]
    functions: list[Function | None]  # None for inputs
    inputs: list[int]  # stage indices of the inputs, in DAG order
    sinks: list[int]  # stage indices whose values results() yields

    @property
    def input_ids(self) -> list[Hashable]:
        return [self.function_ids[i] for i in self.inputs]

    @property
    def sink_ids(self) -> list[Hashable]:
        return [self.function_ids[i] for i in self.sinks]


class _StageBuilder:
    """One stage's call tree: its blobs (payloads, hooks, init) and its value slots."""

    def __init__(self, dag: DAG, stage_of: dict[Hashable, int], pickler: PayloadPickler):
        self.dag = dag
        self.stage_of = stage_of
        self.pickler = pickler
        self.blobs: list[list] = []
        self.slots: list[int] = []  # upstream stage per slot

    def _blob(self, frames: list) -> int:
        self.blobs.append(frames)
        return len(self.blobs) - 1

    def _slot(self, stage: int) -> int:
        if stage not in self.slots:
            self.slots.append(stage)
        return self.slots.index(stage)

    def call(self, fn: Function, seen: tuple = ()) -> StageCall:
        try:
            payload = self._blob(self.pickler.blob(fn.code, fn.extra_args))
        except Exception as exc:
            raise InvalidFunctionError(
                fn.id, f"its code or extra_args cannot be pickled for shipping: {type(exc).__name__}: {exc}"
            ) from exc
        children: list[StageArg] = []
        for arg in fn.args:
            dep_id = arg.id if isinstance(arg, Argument) else arg
            dep = self.dag.functions[dep_id]
            if dep.is_inline:
                children.append(self.call(dep, seen + (fn.id,)))
                continue
            slot = self._slot(self.stage_of[dep_id])
            if isinstance(arg, Argument) and (arg.serialization_fn or arg.deserialization_fn):
                try:
                    ser = self.pickler.hook(arg.serialization_fn)
                    deser = self.pickler.hook(arg.deserialization_fn)
                except Exception as exc:
                    raise InvalidFunctionError(fn.id, f"the hooks of argument {dep_id!r} cannot be pickled: {exc}") from exc
                children.append(StageHook(-1 if ser is None else self._blob(ser),
                                          -1 if deser is None else self._blob(deser), arg.always, slot))
            else:
                children.append(Leaf(slot))
        return StageCall(payload, fn.argument_inclusion, children)

    def init(self, fn: Function) -> int:
        if fn.init is None:
            return -1
        try:
            return self._blob(self.pickler.blob(fn.init, ()))
        except Exception as exc:
            raise InvalidFunctionError(fn.id, f"its init cannot be pickled for shipping: {exc}") from exc


def build_spec(dag: DAG) -> PipelineSpec:
    """Validate ``dag`` as a pipeline and pickle its functions; raises a ValidationError."""
    if not isinstance(dag, DAG):
        raise TypeError(f"stream() takes a handoff.DAG, got {type(dag).__name__}")
    order = [fid for fid in dag.topological_order() if not dag.functions[fid].is_inline]
    functions = dag.functions
    inputs = [fid for fid in order if functions[fid].is_input]
    if not inputs:
        raise ValidationError("a pipeline needs at least one function of type='input' (fed by push)")
    stage_of = {fid: i for i, fid in enumerate(order)}
    upstream: dict[Hashable, set] = {}  # the stages a function takes values from, through inline ones

    def sources(fid: Hashable) -> set:
        found: set = set()
        for dep in functions[fid].dependency_ids:
            found |= sources(dep) if functions[dep].is_inline else {dep}
        return found

    for fid in order:
        upstream[fid] = sources(fid) if not functions[fid].is_input else set()
    consumers: dict[Hashable, list[int]] = {fid: [] for fid in order}
    for fid in order:
        for dep in sorted(upstream[fid], key=stage_of.__getitem__):
            consumers[dep].append(stage_of[fid])
    fed = set(inputs)
    for fid in order:  # every stage runs once per item: it must be fed, through its args, by an input
        fn = functions[fid]
        if fn.is_input:
            if not consumers[fid]:
                raise InvalidFunctionError(fid, "this input feeds no function")
            continue
        if not upstream[fid] & fed:
            raise InvalidFunctionError(
                fid, "it takes no value from an input (directly or through other functions); "
                     "in a pipeline every function runs once per pushed item")
        fed.add(fid)
        if isinstance(fn.node, Collocated) and functions[fn.node.function_id].is_input:
            raise InvalidFunctionError(fid, "collocated with an input, which is never placed")
    pickler = PayloadPickler()
    stages: list[StageRow] = []
    blobs: list[list] = []
    for i, fid in enumerate(order):
        fn = functions[fid]
        first = len(blobs)
        if fn.is_input:
            stages.append(StageRow(i, consumers[fid], [], 0, 0, 0.0, -1, False, None, None, first, 0))
            continue
        builder = _StageBuilder(dag, stage_of, pickler)
        call = builder.call(fn)
        init = builder.init(fn)
        blobs.extend(builder.blobs)
        stages.append(StageRow(
            i, consumers[fid], builder.slots, int(fn.parallelism), int(fn.batch_size or 0),
            float(fn.batch_timeout or 0.0), init, not consumers[fid], call,
            {k: float(v) for k, v in fn.cost.items()} if fn.cost else None, first, len(builder.blobs),
        ))
    return PipelineSpec(
        list(order), stages, blobs, [None if functions[f].is_input else functions[f] for f in order],
        [stage_of[f] for f in inputs], [s.index for s in stages if s.sink],
    )


def check_options(max_pending: Any, item_timeout: Any, errors: Any, allocation_strategy: Any,
                  max_retries: Any) -> None:
    from numbers import Integral

    from handoff._core.strategies import STRATEGIES
    from handoff.dag import retries_problem, timeout_problem

    if isinstance(max_pending, bool) or not isinstance(max_pending, Integral) or not 1 <= int(max_pending) <= 10_000_000:
        raise ValueError(f"max_pending must be an int from 1 to 10000000, got {max_pending!r}")
    if item_timeout is not None and timeout_problem(item_timeout, "item_timeout"):
        raise ValueError(timeout_problem(item_timeout, "item_timeout"))
    if errors not in ("yield", "raise"):
        raise ValueError(f"errors must be 'yield' or 'raise', got {errors!r}")
    if allocation_strategy not in STRATEGIES:
        raise ValueError(f"unknown allocation_strategy {allocation_strategy!r}; valid: {', '.join(STRATEGIES)}")
    if retries_problem(max_retries):
        raise ValueError(retries_problem(max_retries))
