"""Cluster key files, the loopback rule and the CURVE/ZAP gate, without a node."""

from __future__ import annotations

import os
import stat
import tempfile
import time
import uuid

import pytest
import zmq

from handoff import keygen
from handoff.config import NodeConfig, is_loopback
from handoff.errors import AuthenticationError, HandoffError
from handoff.security import Curve, generate_key_text, load_curve, read_key_file

pytestmark = pytest.mark.timeout(30)


def write(path, text: str | bytes) -> str:
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(path, mode) as f:
        f.write(text)
    return str(path)


def key_text(public: bytes, secret: bytes) -> str:
    return f"public = {public.decode()}\nsecret = {secret.decode()}\n"


# ---- key files ------------------------------------------------------------------------------
def test_keygen_file_round_trip(tmp_path, capsys):
    path = tmp_path / "cluster.key"
    assert keygen.main([str(path)]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "wrote a new cluster key" in capsys.readouterr().err
    public, secret = read_key_file(str(path))
    assert len(public) == len(secret) == 40
    assert zmq.curve_public(secret) == public


def test_keygen_to_stdout_reads_back(tmp_path, capsys):
    assert keygen.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Handoff cluster key")
    public, secret = read_key_file(write(tmp_path / "k", out))
    assert zmq.curve_public(secret) == public


def test_keygen_makes_a_new_key_each_time():
    assert generate_key_text() != generate_key_text()


def test_keygen_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "cluster.key"
    assert keygen.main([str(path)]) == 0
    before = path.read_text()
    assert keygen.main([str(path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert path.read_text() == before


def test_keygen_reports_an_unwritable_place(tmp_path, capsys):
    assert keygen.main([str(tmp_path / "no-such-dir" / "k")]) == 1
    assert "cannot create" in capsys.readouterr().err


def test_missing_key_file(tmp_path):
    with pytest.raises(AuthenticationError, match="cannot read key file .*No such file"):
        read_key_file(str(tmp_path / "absent.key"))


def test_key_file_that_is_a_directory(tmp_path):
    with pytest.raises(AuthenticationError, match="cannot read key file"):
        read_key_file(str(tmp_path))


@pytest.mark.parametrize("text, message", [
    ("", r"not a cluster key: no public and secret line.*python -m handoff.keygen"),
    ("hello world\n", r"not a cluster key.*python -m handoff.keygen"),
    ("public = " + "a" * 40 + "\n", r"no secret line"),
])
def test_key_file_without_keys(tmp_path, text, message):
    with pytest.raises(AuthenticationError, match=message):
        read_key_file(write(tmp_path / "k", text))


def test_key_file_with_binary_content(tmp_path):
    with pytest.raises(AuthenticationError, match="not a cluster key"):
        read_key_file(write(tmp_path / "k", b"\xff\xfe\x00garbage"))


@pytest.mark.parametrize("which", ["public", "secret"])
def test_key_of_the_wrong_length(tmp_path, which):
    public, secret = zmq.curve_keypair()
    keys = {"public": public, "secret": secret}
    keys[which] = keys[which][:-3]
    path = write(tmp_path / "k", key_text(keys["public"], keys["secret"]))
    with pytest.raises(AuthenticationError, match=f"the {which} key has 37 characters.*40"):
        read_key_file(path)


def test_public_and_secret_that_do_not_match(tmp_path):
    public, _ = zmq.curve_keypair()
    _, secret = zmq.curve_keypair()
    with pytest.raises(AuthenticationError, match="public and secret keys do not match"):
        read_key_file(write(tmp_path / "k", key_text(public, secret)))


def test_secret_that_is_not_z85(tmp_path):
    public, _ = zmq.curve_keypair()
    with pytest.raises(AuthenticationError, match="secret key is not a valid CURVE key"):
        read_key_file(write(tmp_path / "k", key_text(public, b"~" * 40)))


def test_authentication_error_keeps_its_reason(tmp_path):
    with pytest.raises(AuthenticationError) as info:
        read_key_file(str(tmp_path / "absent.key"))
    assert info.value.reason.startswith("cannot read key file")


def test_key_file_readable_by_others_warns(tmp_path, caplog):
    path = write(tmp_path / "k", generate_key_text())
    os.chmod(path, 0o644)
    read_key_file(path)
    assert "can be read by other users" in caplog.text


# ---- the loopback rule ----------------------------------------------------------------------
@pytest.mark.parametrize("address", [
    "tcp://127.0.0.1:5555", "tcp://127.8.9.10:1", "tcp://localhost:5555", "tcp://[::1]:5555",
    "ipc:///tmp/handoff.ipc", "inproc://node",
])
def test_loopback_addresses(address):
    assert is_loopback(address)


@pytest.mark.parametrize("address", [
    "tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://[::]:5555", "tcp://10.1.2.3:5555",
    "tcp://192.168.0.7:5555", "tcp://[2001:db8::1]:5555",
])
def test_addresses_reachable_from_elsewhere(address):
    assert not is_loopback(address)


def config(**kw) -> NodeConfig:
    return NodeConfig(name="n", resources={"cpu": 1}, workers=1, **kw)


def test_open_address_without_a_key_is_refused():
    with pytest.raises(HandoffError) as info:
        load_curve(config(listen="tcp://0.0.0.0:5555"))
    text = str(info.value)
    assert "refusing to listen on tcp://0.0.0.0:5555 without a cluster key" in text
    assert "python -m handoff.keygen" in text
    assert "--key-file" in text and "--insecure" in text


def test_insecure_or_loopback_needs_no_key():
    assert load_curve(config(listen="tcp://0.0.0.0:5555", insecure=True)) is None
    assert load_curve(config(listen="tcp://127.0.0.1:5555")) is None


def test_a_key_turns_on_curve_anywhere(tmp_path):
    path = write(tmp_path / "k", generate_key_text())
    curve = load_curve(config(listen="tcp://0.0.0.0:5555", key_file=path))
    assert isinstance(curve, Curve)
    assert (curve.public, curve.secret) == read_key_file(path)


def test_a_bad_key_is_an_error_even_on_loopback(tmp_path):
    with pytest.raises(AuthenticationError):
        load_curve(config(key_file=str(tmp_path / "absent.key")))


# ---- the CURVE gate (ipc: no network) -------------------------------------------------------
@pytest.fixture
def gate():
    """A CURVE server ROUTER with the cluster key, its Curve, and a way to make clients."""
    public, secret = zmq.curve_keypair()
    curve = Curve(public, secret)
    ctx = zmq.Context()
    curve.start(ctx)
    server = ctx.socket(zmq.ROUTER)
    server.linger = 0
    curve.server(server)
    address = f"ipc://{tempfile.gettempdir()}/handoff-test-{uuid.uuid4().hex[:8]}.ipc"
    server.bind(address)
    clients = []

    def client(setup=None) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        if setup is not None:
            setup(sock)
        sock.connect(address)
        clients.append(sock)
        return sock

    try:
        yield curve, server, client
    finally:
        for sock in [*clients, server]:
            sock.close(0)
        curve.stop()
        ctx.term()
        try:
            os.unlink(address[len("ipc://"):])
        except OSError:
            pass


def test_key_holder_gets_through(gate):
    curve, server, client = gate
    sock = client(curve.client)
    sock.send(b"hi")
    assert server.poll(5000)
    assert server.recv_multipart()[1] == b"hi"
    assert curve.rejected == 0


def wait_rejected(curve: Curve, n: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while curve.rejected < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return curve.rejected >= n


def other_key(sock: zmq.Socket) -> None:
    public, secret = zmq.curve_keypair()
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, public


@pytest.mark.parametrize("setup", [None, other_key], ids=["no-curve", "other-key"])
def test_strangers_are_rejected_and_counted(gate, setup):
    curve, server, client = gate
    sock = client(setup)
    sock.send(b"let me in")
    assert wait_rejected(curve, 1)
    assert not server.poll(300)


def test_zap_denies_a_client_that_only_knows_the_public_key(gate):
    curve, server, client = gate

    def knows_public(sock: zmq.Socket) -> None:
        other_key(sock)
        sock.curve_serverkey = curve.public

    sock = client(knows_public)
    sock.send(b"let me in")
    assert wait_rejected(curve, 1)
    assert not server.poll(300)
