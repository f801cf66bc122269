"""Cluster key files, the loopback rule and the CURVE/ZAP gate, without a node."""

from __future__ import annotations

import os
import stat
import tempfile
import threading
import uuid

import pytest
import zmq

from handoff import keygen, security
from handoff.config import NodeConfig, is_loopback, user_runtime_dir
from handoff.errors import AuthenticationError, HandoffError, ProtocolError
from handoff.protocol import decode, encode
from handoff.protocol.messages import Clear, Gossip, Hello
from handoff.security import (
    USER_KEY_FILE, Curve, generate_key_text, load_curve, private_dir, read_key_file, user_key,
)
from handoff.transport import Transport
from handoff.testing import wait_until

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


def test_insecure_means_no_curve_and_says_so(tmp_path, caplog):
    runtime = str(tmp_path / "runtime")
    for listen in ("tcp://0.0.0.0:5555", "tcp://127.0.0.1:5555"):
        caplog.clear()
        assert load_curve(config(listen=listen, insecure=True, runtime_dir=runtime)) is None
        assert "INSECURE" in caplog.text and listen in caplog.text
    assert not os.path.exists(runtime)  # no key was made


# ---- the per-user key (loopback without a key file) -------------------------------------------
def test_loopback_without_a_key_uses_the_user_key(tmp_path):
    runtime = str(tmp_path / "runtime")
    curve = load_curve(config(listen="tcp://127.0.0.1:5555", runtime_dir=runtime))
    assert isinstance(curve, Curve) and curve.source == "user key"
    path = os.path.join(runtime, USER_KEY_FILE)
    assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert (curve.public, curve.secret) == read_key_file(path)
    # the same user's next process reuses it; someone with another runtime dir has another
    again = load_curve(config(runtime_dir=runtime))
    assert (again.public, again.secret) == (curve.public, curve.secret)
    other = load_curve(config(runtime_dir=str(tmp_path / "other")))
    assert other.public != curve.public
    assert sorted(os.listdir(runtime)) == [USER_KEY_FILE]  # no temporary file left behind


def test_user_key_made_by_many_at_once_is_one_key(tmp_path):
    runtime = str(tmp_path / "runtime")
    barrier = threading.Barrier(8)
    keys, errors = [], []

    def make() -> None:
        barrier.wait()
        try:
            keys.append(user_key(runtime))
        except Exception as exc:  # reported below with the others
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(keys) == 8 and len(set(keys)) == 1
    assert sorted(os.listdir(runtime)) == [USER_KEY_FILE]


def test_a_runtime_dir_others_can_write_is_refused(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    os.chmod(runtime, 0o777)
    with pytest.raises(AuthenticationError, match="can be written by other users"):
        load_curve(config(runtime_dir=str(runtime)))
    assert not (runtime / USER_KEY_FILE).exists()


def test_a_runtime_dir_of_another_user_is_refused(tmp_path, monkeypatch):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    # the directory's owner is who we are; pretend to be someone else (any uid but it)
    monkeypatch.setattr(security, "_uid", lambda: os.stat(runtime).st_uid + 1)
    with pytest.raises(AuthenticationError, match="belongs to uid"):
        private_dir(str(runtime))


def test_a_runtime_dir_that_is_a_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "runtime"
    link.symlink_to(target)
    with pytest.raises(AuthenticationError, match="not a directory"):
        private_dir(str(link))


def test_a_user_key_others_can_read_is_refused(tmp_path):
    runtime = tmp_path / "runtime"
    user_key(str(runtime))
    os.chmod(runtime / USER_KEY_FILE, 0o644)
    with pytest.raises(AuthenticationError, match="can be read by other users"):
        user_key(str(runtime))


def test_runtime_dir_follows_xdg_runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert user_runtime_dir() == str(tmp_path / "handoff")
    assert config().runtime_dir == str(tmp_path / "handoff")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "absent"))
    fallback = user_runtime_dir()
    assert fallback.startswith(tempfile.gettempdir()) and str(os.getuid()) in fallback


def test_keygen_user_prints_the_user_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert keygen.main(["--user"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(tmp_path / "handoff" / USER_KEY_FILE)
    assert read_key_file(path) == user_key(str(tmp_path / "handoff"))


# ---- nothing pickled is loaded from a peer that has not been accepted ---------------------------
class Touch:
    """Unpickling this creates a file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_codec_never_unpickles_a_header_value_when_told_not_to(tmp_path):
    marker = tmp_path / "unpickled"
    frames = encode(Clear("stranger", Touch(str(marker))))  # a key msgpack cannot carry
    with pytest.raises(ProtocolError, match="pickled value is not accepted"):
        decode(frames, pickles=False)
    assert not marker.exists()
    # nested anywhere in the header: still refused
    nested = encode(Gossip("stranger", [["x", {"k": [Touch(str(marker))]}]]))
    with pytest.raises(ProtocolError):
        decode(nested, pickles=False)
    assert not marker.exists()
    decode(frames, pickles=True)  # control: the same frames do run code when allowed
    assert marker.exists()


def test_transport_loads_pickles_only_after_the_hello_is_accepted(tmp_path):
    """Before ``greet`` a connection's pickled header values are dropped unread; after, loaded."""
    marker = tmp_path / "unpickled"
    ctx = zmq.Context()
    transport = Transport(ctx)
    address = transport.bind(f"ipc://{tempfile.gettempdir()}/handoff-test-{uuid.uuid4().hex[:8]}.ipc")
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(address)
    try:
        def receive_one() -> list:
            assert transport.router.poll(5000)
            return list(transport.receive(transport.router))

        dealer.send_multipart(encode(Hello("stranger", "tcp://127.0.0.1:1", 1, {"cpu": Touch(str(marker))})))
        assert receive_one() == [] and transport.dropped == 1
        dealer.send_multipart(encode(Clear("stranger", Touch(str(marker)))))
        assert receive_one() == [] and transport.dropped == 2
        assert not marker.exists()
        dealer.send_multipart(encode(Hello("stranger", "tcp://127.0.0.1:1", 1, {"cpu": 1.0})))
        [(identity, hello, _)] = receive_one()
        assert isinstance(hello, Hello)
        transport.greet(identity)  # what the node does when it accepts the hello
        dealer.send_multipart(encode(Clear("stranger", Touch(str(marker)))))
        [(_, clear, _)] = receive_one()
        assert isinstance(clear, Clear) and marker.exists()
    finally:
        dealer.close(0)
        transport.close()
        ctx.term()
        os.unlink(address[len("ipc://"):])


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
    return wait_until(lambda: curve.rejected >= n, timeout, interval=0.02)


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
