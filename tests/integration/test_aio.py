"""asyncio: execute_async and asyncio.wrap_future on Executor futures; the event loop keeps
running while the runtime works."""

from __future__ import annotations

import asyncio
import os

import pytest

import handoff
from handoff.testing import wait_until

pytestmark = pytest.mark.timeout(120)


def wait_for_file(path, value):
    assert wait_until(lambda: os.path.exists(path), timeout=60)
    return value


def double(x):
    return 2 * x


def chain_dag(k, ticks):
    """x waits until the event loop's ticker has written ``ticks``; y doubles x."""
    dag = handoff.DAG(f"aio-{k}")
    dag.add_function(handoff.Function(id="x", code=wait_for_file, extra_args=[ticks, k]))
    dag.add_function(handoff.Function(id="y", code=double, args=["x"]))
    return dag


@pytest.fixture(scope="module")
def node():
    handoff.stop()
    handoff.start(workers=2)
    yield
    handoff.stop()


def test_many_concurrent_runs_while_a_ticker_keeps_ticking(node, tmp_path):
    """Every run waits for a file that only the ticker task writes, after 5 ticks: they can
    finish only if the event loop runs while they are in flight."""
    ticks = str(tmp_path / "ticks")

    async def ticker(stop):
        n = 0
        while not stop.is_set():
            n += 1
            if n == 5:
                open(ticks, "w").close()
            await asyncio.sleep(0.01)
        return n

    async def main():
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        results = await asyncio.gather(*(handoff.execute_async(chain_dag(k, ticks)) for k in range(30)))
        stop.set()
        return [r.results["y"] for r in results], await tick

    values, n = asyncio.run(main())
    assert values == [2 * k for k in range(30)]
    assert n >= 5


def test_execute_async_checks_its_options(node):
    with pytest.raises(ValueError, match="unknown option"):
        asyncio.run(handoff.execute_async(chain_dag(0, "x"), retries=3))
    with pytest.raises(TypeError):
        asyncio.run(handoff.execute_async("not a dag"))
    with pytest.raises(ValueError, match="cache"):
        asyncio.run(handoff.execute_async(chain_dag(0, "x"), cache="yes"))
    dag = handoff.DAG()
    dag.add_function(handoff.Function(id="d", code=double, extra_args=[21]))
    result = asyncio.run(handoff.execute_async(dag, cache=False, max_retries=0, timeout=60))
    assert result.results["d"] == 42


def test_a_failed_run_raises_in_the_awaiting_task(node):
    dag = handoff.DAG()
    dag.add_function(handoff.Function(id="bad", code=double, extra_args=[None]))
    with pytest.raises(handoff.FunctionError) as info:
        asyncio.run(handoff.execute_async(dag, max_retries=0))
    assert info.value.function_id == "bad"


def test_cancelling_the_awaiting_task_cancels_the_run(node, tmp_path):
    never = str(tmp_path / "never")
    dag = handoff.DAG()
    dag.add_function(handoff.Function(id="stuck", code=wait_for_file, extra_args=[never, 1], timeout=100))

    async def main():
        task = asyncio.create_task(handoff.execute_async(dag))
        assert await asyncio.to_thread(
            wait_until, lambda: handoff.node_stats()["runs"] >= 1, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_until(lambda: handoff.node_stats()["runs"] == 0, timeout=30)
    open(never, "w").close()


def test_wrap_future_on_executor_futures(node):
    async def main():
        with handoff.Executor() as ex:
            fs = [asyncio.wrap_future(ex.submit(double, k)) for k in range(50)]
            return await asyncio.gather(*fs)

    assert asyncio.run(main()) == [2 * k for k in range(50)]


@handoff.fn
def inc(x):
    return x + 1


def test_run_async_returns_values_in_the_shape_given(node):
    async def main():
        a = inc(1)
        b = inc(a)
        one, shaped = await asyncio.gather(
            handoff.run_async(b), handoff.run_async({"a": a, "both": [a, b]}))
        return one, shaped

    one, shaped = asyncio.run(main())
    assert one == 3
    assert shaped == {"a": 2, "both": [2, 3]}


def test_run_async_raises_the_remote_exception_by_type(node):
    @handoff.fn
    def broken(x):
        raise KeyError(x)

    with pytest.raises(KeyError):
        asyncio.run(handoff.run_async(broken(1), max_retries=0))
