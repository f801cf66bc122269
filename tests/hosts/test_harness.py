"""The harness itself: hosts differ (name, /dev/shm, address), talk only over the bridge,
leave nothing behind, and say why when the machine cannot make them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hosts_harness import WAIT

from handoff.testing.hosts import Hosts, HostsError
from handoff.testing.relay import DelayRelay

pytestmark = pytest.mark.timeout(120)

LOOK = ("import os, socket; print(socket.gethostname(), os.listdir('/dev/shm'), "
        "open('/proc/self/ns/net').name, flush=True)")


def test_hosts_have_their_own_name_shm_and_address_and_reach_each_other(make_hosts):
    hosts = make_hosts(2)
    h1, h2 = hosts["h1"], hosts["h2"]
    assert len({h1.address, h2.address, hosts.root_address}) == 3
    marker = hosts.python("h1", "-c", "open('/dev/shm/hf-test-marker', 'w').close()")
    assert marker.wait(WAIT) == 0, marker.output()
    assert not os.path.exists("/dev/shm/hf-test-marker")  # h1's /dev/shm is not this one
    seen = {}
    for name in ("h1", "h2"):
        proc = hosts.python(name, "-c", LOOK)
        assert proc.wait(WAIT) == 0, proc.output()
        seen[name] = proc.output().split()[0:2]
    assert seen["h1"][0] == "h1" and seen["h2"][0] == "h2"
    assert "['hf-test-marker']" in " ".join(seen["h1"]) and seen["h2"][1] == "[]"
    # h2 reaches h1 across the bridge, and this process (a host too) reaches both
    server = hosts.python("h1", "-c", "import socket; s = socket.create_server(('"
                          + h1.address + "', 7000)); print('up', flush=True); "
                          "c, _ = s.accept(); c.sendall(socket.gethostname().encode())")
    server.wait_for("up", WAIT)
    client = hosts.python("h2", "-c", "import socket; print(socket.create_connection(('"
                          + h1.address + "', 7000), 10).recv(100).decode())")
    assert client.wait(WAIT) == 0 and client.output().strip() == "h1", client.output()


def test_close_after_a_failure_removes_namespaces_links_processes_and_shm(make_hosts):
    with pytest.raises(RuntimeError):
        with Hosts(2) as hosts:
            made = hosts.made()
            sleeper = hosts.python("h1", "-c", "import time; print('up', flush=True); time.sleep(600)")
            sleeper.wait_for("up", WAIT)
            pids = hosts["h1"].pids()
            raise RuntimeError("a failing test")
    assert len(made) == 4  # two host namespaces, the switch and this machine's veth
    assert hosts.made() == []
    assert sleeper.pid in pids and not any(os.path.exists(f"/proc/{p}") for p in pids)


def test_a_user_who_cannot_make_namespaces_is_told_why(tmp_path):
    code = "from handoff.testing.hosts import Hosts\nHosts(1)"
    # root without any capability: what a container without CAP_NET_ADMIN/CAP_SYS_ADMIN gets
    proc = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                           sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=WAIT, cwd=str(tmp_path),
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode != 0
    assert "cannot make hosts here" in proc.stderr and "root" in proc.stderr, proc.stderr


def test_the_delay_relay_carries_both_ways_in_order_and_ends_with_its_connection(make_hosts):
    hosts = make_hosts(1)
    h1 = hosts["h1"]
    echo = hosts.python("h1", "-c", "import socket; s = socket.create_server(('" + h1.address
                        + "', 7001)); print('up', flush=True); c, _ = s.accept()\n"
                        "while (d := c.recv(65536)): c.sendall(d)")
    echo.wait_for("up", WAIT)
    payload = os.urandom(3 << 20)
    with DelayRelay(hosts.root_address, (h1.address, 7001), delay=0.05) as relay:
        import socket

        with socket.create_connection((relay.host, relay.port), WAIT) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            got = bytearray()
            while data := c.recv(1 << 20):
                got += data
        assert bytes(got) == payload
        assert relay.stats.connections == 1
        assert relay.stats.bytes_in == relay.stats.bytes_out == len(payload)
    assert echo.wait(WAIT) == 0
    with pytest.raises(ValueError):
        DelayRelay(hosts.root_address, (h1.address, 7001), delay=-1)


def test_hosts_refuse_bad_arguments_unknown_hosts_and_work_after_close(make_hosts):
    with pytest.raises(ValueError):
        Hosts(0)
    with pytest.raises(ValueError):
        Hosts(2, names=["a", "a"])
    hosts = make_hosts(1, names=["solo"])
    with pytest.raises(KeyError, match="no host 'h1'; hosts: \\['solo'\\]"):
        hosts.run("h1", ["true"])
    hosts.close()
    with pytest.raises(HostsError, match="closed"):
        hosts.run("solo", ["true"])
