"""The README's three-host commands, as written, on three hosts (and a fourth for the
driver): the image example runs with the cluster key; a host without the key runs nothing."""

from __future__ import annotations

import os
import re
import shlex
import sys

import pytest
from hosts_harness import WAIT, start_driver

import handoff
from handoff.testing.hosts import Hosts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README_ADDRESS = re.compile(r"\b10\.0\.0\.(\d+)\b")


def readme_commands() -> list[str]:
    """The commands of the README's "Three hosts" block, comments dropped."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index("Three hosts (say 10.0.0.1-3)")
    block = text[text.index("```bash", start) + len("```bash"):]
    block = block[:block.index("```")]
    return [line.split(" #")[0].strip() for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def as_run_here(command: str, hosts: Hosts) -> list[str]:
    """The README command with its addresses mapped to the hosts' (10.0.0.N -> host hN),
    this interpreter for ``python3``, and ``examples/`` in this checkout (the commands run
    in a temporary directory, where ``cluster.key`` is made)."""
    command = README_ADDRESS.sub(lambda m: hosts[f"h{m.group(1)}"].address, command)
    argv = shlex.split(command)
    assert argv[0] == "python3", command
    argv[0] = sys.executable
    return [os.path.join(ROOT, a) if a.startswith("examples/") else a for a in argv]


def host_of(command: str) -> str:
    """The host a README line runs on: the one its --listen names."""
    return "h" + README_ADDRESS.search(command.split("--listen", 1)[1]).group(1)


def test_readme_three_host_commands_run_the_image_example_and_a_keyless_host_gets_nothing(
        make_hosts, tmp_path):
    commands = readme_commands()
    keygen, *nodes, driver = commands
    assert keygen == "python3 -m handoff.keygen cluster.key"
    assert len(nodes) == 3 and all("-m handoff.node" in c and "--key-file cluster.key" in c for c in nodes)
    assert "examples/cluster_image_pipeline.py" in driver and "--key-file cluster.key" in driver
    hosts = make_hosts(5)
    key_dir = str(tmp_path)
    made = hosts.run("h1", as_run_here(keygen, hosts), cwd=key_dir, label="keygen")
    assert made.wait(WAIT) == 0, made.output()
    seed, *others = nodes  # each in a terminal of its own, on its host; the seed first
    for group in ([seed], others):
        started = [(command, hosts.run(host_of(command), as_run_here(command, hosts),
                                       cwd=key_dir, label="node")) for command in group]
        for command, proc in started:
            argv = shlex.split(command)
            proc.wait_for(f"node {argv[argv.index('--name') + 1]} listening on", WAIT)

    run = hosts.run(host_of(driver), as_run_here(driver, hosts), cwd=key_dir,
                    label="example")
    assert run.wait(240) == 0, run.output()
    out = run.output()
    assert "Pipeline completed successfully!" in out
    assert "edge_detection ran on 'h3', which has gpu=2" in out
    for name in ("h1", "h2", "h3"):
        assert f"  {name}: " in out  # the driver saw every node

    # an observer with the key: what ran where so far
    start_driver(hosts, hosts["h1"].url(), os.path.join(key_dir, "cluster.key"), ["h1", "h2", "h3"])
    before = {n: handoff.node_stats(n)["pool"]["completed"] for n in ("h1", "h2", "h3")}
    rejected = handoff.node_stats("h1")["rejected_connections"]
    assert sum(before.values()) > 0

    # host h5 without the key: no key at all is refused before anything is sent ...
    keyless = [a.replace(hosts["h4"].address, hosts["h5"].address)
               for a in as_run_here(driver, hosts)]
    cut = keyless.index("--key-file")
    no_key = hosts.run("h5", keyless[:cut] + keyless[cut + 2:], cwd=key_dir, label="no key")
    assert no_key.wait(WAIT) != 0
    assert "without a cluster key" in no_key.output()
    # ... and another cluster's key is rejected by the node it joins
    hosts.keygen(os.path.join(key_dir, "other.key"))
    wrong = hosts.run("h5", keyless[:cut] + ["--key-file", "other.key"] + keyless[cut + 2:],
                      cwd=key_dir, label="wrong key")
    assert wrong.wait(WAIT) != 0
    assert "rejected this node's key" in wrong.output(), wrong.output()
    node = hosts.run("h5", [sys.executable, "-m", "handoff.node", "--name", "h5", "--listen",
                            hosts["h5"].url(), "--join", hosts["h1"].url(), "--key-file",
                            "other.key"], cwd=key_dir, label="node with the wrong key")
    assert node.wait(WAIT) == 3
    assert "could not join the cluster" in node.output()
    assert handoff.node_stats("h1")["rejected_connections"] > rejected
    assert {n: handoff.node_stats(n)["pool"]["completed"] for n in ("h1", "h2", "h3")} == before
    assert sorted(handoff.discover_nodes()) == ["driver", "h1", "h2", "h3"]
