"""The status table (python -m handoff status without --json) and the node name on log records."""

from __future__ import annotations

import io
import json
import logging
import threading

from handoff.logs import JsonFormatter, NodeFilter, TEXT_FORMAT, node_started, node_stopped
from handoff.status import format_status


def node(state: str, running: int | None, queued: int | None, capacity: dict, used: dict,
         answered: bool = True, **extra: object) -> dict:
    return {"state": state, "address": f"tcp://10.0.0.1:{len(capacity)}", "capacity": capacity,
            "used": used, "running": running, "queued": queued, "answered": answered, **extra}


DOC = {
    "node": "a", "time": 0.0,
    "nodes": {
        "a": node("alive", 2, 1, {"cpu": 4.0, "gpu": 1.0}, {"cpu": 2.0, "gpu": 1.0}),
        "b": node("suspect", None, None, {"cpu": 8.0}, {"cpu": 0.5}, answered=False),
        "c": node("dead", None, None, {"cpu": 2.0}, {}, answered=False, left=True),
    },
    "runs": [{"dag_id": "etl", "run_id": "r1", "driver": "a", "done": 3, "total": 10,
              "running": 2, "waiting": {"g": "waits for room: node 'a' has gpu=0 of the 1 it "
                                               "needs free; node 'b' is too small (has no gpu)"},
              "waiting_count": 4, "elapsed": 12.25}],
    "recent_failures": [{"time": 0.0, "node": "b", "dag_id": "etl", "function_id": "f",
                         "attempt": 1, "error": "ValueError: bad row"}],
}


def test_the_table_shows_each_node_its_load_the_runs_what_waits_and_failures():
    lines = format_status(DOC).splitlines()
    assert lines[0] == "cluster seen from a: 3 nodes (1 alive, 1 left, 1 suspect)"
    header, a, b, c = lines[2:6]
    assert header.split() == ["NODE", "STATE", "RUNNING", "QUEUED", "CPU", "USED/TOTAL", "GPU",
                              "USED/TOTAL", "ADDRESS"]
    assert a.split() == ["a", "alive", "2", "1", "2/4", "1/1", "tcp://10.0.0.1:2"]
    assert b.split() == ["b", "suspect", "(no", "answer)", "-", "-", "0.5/8", "-", "tcp://10.0.0.1:1"]
    assert c.split() == ["c", "left", "-", "-", "0/2", "-", "tcp://10.0.0.1:1"]
    text = "\n".join(lines)
    assert "  etl (driver a): 3/10 done, 2 running, 4 waiting, 12.2 s" in text
    assert "    g waits: waits for room: node 'a' has gpu=0 of the 1 it needs free; node 'b' " \
           "is too small (has no gpu)" in text
    assert "    ... and 3 more waiting" in text
    assert lines[-2] == "recent failures:"
    assert lines[-1].endswith(" b: etl/f attempt 1: ValueError: bad row")


def test_an_idle_cluster_says_so():
    doc = {"node": "a", "nodes": {"a": node("alive", 0, 0, {"cpu": 1.0}, {"cpu": 0.0})},
           "runs": [], "recent_failures": []}
    text = format_status(doc)
    assert "runs in flight: none" in text and "recent failures" not in text


def log_through(formatter: logging.Formatter, logger: logging.Logger, thread_name: str | None) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(NodeFilter())
    logger.addHandler(handler)
    try:
        if thread_name is None:
            logger.warning("hello %s", "there")
        else:
            t = threading.Thread(target=logger.warning, args=("hello %s", "there"), name=thread_name)
            t.start()
            t.join()
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_every_record_names_its_node_in_text_and_in_json():
    logger = logging.getLogger("handoff.test-logs")
    logger.propagate = False
    node_started("n1")
    try:
        text = log_through(logging.Formatter(TEXT_FORMAT), logger, None)
        assert " WARNING n1 handoff.test-logs: hello there" in text
        # a record from another node's loop thread in this process names that node
        line = log_through(JsonFormatter(), logger, "handoff-node-n2")
        record = json.loads(line)
        assert set(record) == {"time", "level", "node", "logger", "message"}
        assert (record["level"], record["node"], record["logger"], record["message"]) == (
            "WARNING", "n2", "handoff.test-logs", "hello there")
        assert record["time"].endswith("+00:00")
    finally:
        node_stopped("n1")
        logger.propagate = True


def test_other_loggers_may_still_pass_their_own_node_field():
    node_started("n1")
    try:
        record = logging.getLogger("someone.else").makeRecord(
            "someone.else", logging.INFO, __file__, 1, "hi", (), None, extra={"node": "theirs"})
        assert record.node == "theirs"
    finally:
        node_stopped("n1")
