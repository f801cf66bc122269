"""Cluster keys and ZeroMQ CURVE: only holders of the cluster key can talk to a node.

A cluster key is one CURVE key pair shared by every node of the cluster (written by
``python -m handoff.keygen``). Each node's ROUTER is a CURVE server with it, each DEALER a
CURVE client with it, and a ZAP handler admits only clients that present the cluster's
public key. Traffic is encrypted; a peer without the key never gets a message through.
Without a key file a loopback node uses a per-user key kept in the user's runtime directory
(mode 0600), so the same user's processes join with no flags and other users cannot.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import zmq

from handoff.config import NodeConfig, is_loopback
from handoff.errors import AuthenticationError, HandoffError

log = logging.getLogger("handoff.security")

__all__ = ["Curve", "generate_key_text", "load_curve", "read_key_file", "user_key",
           "private_dir"]

KEY_LENGTH = 40  # a Z85-encoded CURVE key
HOW_TO_MAKE_ONE = "make one with `python -m handoff.keygen cluster.key`"
# every way a connection can fail before it is authenticated: no CURVE or the wrong key
# (PROTOCOL), a client key the ZAP handler denied (AUTH), garbage or a port scan (NO_DETAIL)
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_LOG_EVERY = 10.0  # seconds between warnings about rejected connections
USER_KEY_FILE = "user.key"  # the per-user key's name inside the runtime directory


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise AuthenticationError(
            f"this libzmq ({zmq.zmq_version()}) was built without CURVE support; "
            "install a pyzmq wheel (pip install pyzmq), which bundles one with it"
        )


def generate_key_text() -> str:
    _require_curve()
    public, secret = zmq.curve_keypair()
    return (
        "# Handoff cluster key: give this file to every node of the cluster, and no one else.\n"
        f"public = {public.decode()}\n"
        f"secret = {secret.decode()}\n"
    )


def read_key_file(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a key file; AuthenticationError says what is wrong with it."""
    _require_curve()
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(64 * 1024)
    except OSError as exc:
        raise AuthenticationError(f"cannot read key file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AuthenticationError(f"{path!r} is not a cluster key ({HOW_TO_MAKE_ONE})") from None
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        values[k.strip()] = v.strip().encode()
    public, secret = values.get("public"), values.get("secret")
    if not public or not secret:
        missing = " and ".join(n for n in ("public", "secret") if not values.get(n))
        raise AuthenticationError(
            f"{path!r} is not a cluster key: no {missing} line ({HOW_TO_MAKE_ONE})"
        )
    for name, key in (("public", public), ("secret", secret)):
        if len(key) != KEY_LENGTH:
            raise AuthenticationError(
                f"{path!r}: the {name} key has {len(key)} characters, a cluster key has "
                f"{KEY_LENGTH} ({HOW_TO_MAKE_ONE})"
            )
    try:
        derived = zmq.curve_public(secret)
    except (ValueError, zmq.ZMQError):
        raise AuthenticationError(f"{path!r}: the secret key is not a valid CURVE key") from None
    if derived != public:
        raise AuthenticationError(
            f"{path!r}: the public and secret keys do not match (was the file edited? "
            f"{HOW_TO_MAKE_ONE})"
        )
    _warn_if_readable_by_others(path)
    return public, secret


def _warn_if_readable_by_others(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("key file %r can be read by other users (mode %o); chmod 600 it",
                    path, stat.S_IMODE(mode))


# ---- the per-user key ------------------------------------------------------------------------
def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def private_dir(path: str) -> str:
    """``path`` as a directory only this user can write to: created with mode 0700 if absent;
    AuthenticationError if it is a symlink, someone else's, or group/world-writable."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise AuthenticationError(f"cannot create the key directory {path!r}: {exc.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise AuthenticationError(f"{path!r} is not a directory (a symlink?); refusing to keep "
                                  "a key there")
    if _uid() is not None and st.st_uid != _uid():
        raise AuthenticationError(f"{path!r} belongs to uid {st.st_uid}, not to this user "
                                  f"(uid {_uid()}); refusing to keep a key there")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AuthenticationError(f"{path!r} can be written by other users (mode "
                                  f"{stat.S_IMODE(st.st_mode):o}); refusing to keep a key there")
    return path


def _create_key_file(path: str) -> None:
    """Write a new key to ``path`` atomically with mode 0600; if another process won the
    race, its key stays (both then read the same one)."""
    tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o600)  # the umask can only take bits away
            f.write(generate_key_text())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if the file exists: never replaces a key in use
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def user_key(runtime_dir: str) -> tuple[bytes, bytes]:
    """This user's default key pair from ``runtime_dir``, made on first use; refuses a key
    file that is not this user's or that others could read."""
    private_dir(runtime_dir)
    path = os.path.join(runtime_dir, USER_KEY_FILE)
    if not os.path.lexists(path):
        _create_key_file(path)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise AuthenticationError(f"{path!r} is not a regular file; refusing it as a key")
    if _uid() is not None and st.st_uid != _uid():
        raise AuthenticationError(f"{path!r} belongs to uid {st.st_uid}, not to this user")
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthenticationError(f"{path!r} can be read by other users (mode "
                                  f"{stat.S_IMODE(st.st_mode):o}); chmod 600 it or delete it")
    return read_key_file(path)


@dataclass
class Curve:
    """The cluster key pair, applied to a node's sockets; ``rejected`` counts connections
    that failed to authenticate (no CURVE, another key, a denied client key, garbage).
    ``source`` says where the key came from: "key file" or "user key"."""

    public: bytes
    secret: bytes
    source: str = "key file"
    rejected: int = 0
    _auth: Any = field(default=None, repr=False)
    _watchers: list = field(default_factory=list, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)

    def start(self, ctx: zmq.Context) -> None:
        """Run the ZAP handler for ``ctx``: admit only the cluster's public key."""
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(ctx, log=logging.getLogger("handoff.zap"))
        auth.start()
        expected = self.public

        class ClusterKeyOnly:
            # the handshake already proved the client holds the secret of the key it shows;
            # a denial is counted by the socket monitor (HANDSHAKE_FAILED_AUTH), not here
            def callback(_, domain: str, key: bytes) -> bool:
                return key == expected

        auth.configure_curve_callback("*", credentials_provider=ClusterKeyOnly())
        self._auth = auth

    def stop(self) -> None:
        """Stop the ZAP handler and the monitors; call before the context is terminated."""
        self._stopping.set()
        for thread in self._watchers:
            thread.join(5.0)
        self._watchers.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def server(self, sock: zmq.Socket) -> None:
        sock.curve_server = True
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        self._watch(sock)

    def client(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.public

    # ---- rejected connections ------------------------------------------------------------
    def _watch(self, sock: zmq.Socket) -> None:
        """Count the failed handshakes on ``sock`` from a thread (the loop is not ours)."""
        monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED | zmq.EVENT_MONITOR_STOPPED)
        thread = threading.Thread(target=self._count_rejections, args=(monitor,),
                                  name="handoff-curve-monitor", daemon=True)
        thread.start()
        self._watchers.append(thread)

    def _count_rejections(self, monitor: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message

        logged_at, logged_count = float("-inf"), 0
        try:
            while not self._stopping.is_set():
                if not monitor.poll(100):
                    continue
                event = recv_monitor_message(monitor)["event"]
                if event == zmq.EVENT_MONITOR_STOPPED:
                    return
                if event & _HANDSHAKE_FAILED:
                    self.rejected += 1
                    now = time.monotonic()
                    if now - logged_at >= _LOG_EVERY:
                        # a peer with the wrong key retries every reconnect interval: say it
                        # once in a while with a count, not once per attempt
                        log.warning("rejected %d connection(s) without the cluster key "
                                    "(%d in all)", self.rejected - logged_count, self.rejected)
                        logged_at, logged_count = now, self.rejected
        except zmq.ZMQError:
            pass  # the context is going away
        finally:
            monitor.close(0)


def load_curve(config: NodeConfig) -> Curve | None:
    """The node's CURVE settings: the key file's, else (loopback) the per-user key; None only
    with ``insecure``. Refuses a non-loopback node with neither key nor ``insecure``."""
    if config.key_file:
        public, secret = read_key_file(config.key_file)
        return Curve(public, secret)
    if config.insecure:
        log.warning(
            "INSECURE: node %s listens on %s without CURVE; any process that can reach that "
            "address (other users of this machine too) can run code as this user. Drop "
            "--insecure (insecure=True) to use a key.", config.name, config.listen)
        return None
    if not is_loopback(config.listen):
        raise HandoffError(
            f"refusing to listen on {config.listen} without a cluster key: anyone who can reach "
            "it could run code here. Make a key with `python -m handoff.keygen cluster.key`, "
            "copy it to every node and pass --key-file cluster.key (handoff.start(key_file=...)), "
            "or pass --insecure (insecure=True) on a network you trust."
        )
    public, secret = user_key(config.runtime_dir)
    return Curve(public, secret, source="user key")
