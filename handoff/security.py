"""Cluster keys and ZeroMQ CURVE: only holders of the cluster key can talk to a node.

A cluster key is one CURVE key pair shared by every node of the cluster (written by
``python -m handoff.keygen``). Each node's ROUTER is a CURVE server with it, each DEALER a
CURVE client with it, and a ZAP handler admits only clients that present the cluster's
public key. Traffic is encrypted; a peer without the key never gets a message through.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import zmq

from handoff.config import NodeConfig, is_loopback
from handoff.errors import AuthenticationError, HandoffError

log = logging.getLogger("handoff.security")

__all__ = ["Curve", "load_curve", "generate_key_text", "read_key_file"]


def generate_key_text() -> str:
    public, secret = zmq.curve_keypair()
    return (
        "# Handoff cluster key: give this file to every node of the cluster, and no one else.\n"
        f"public = {public.decode()}\n"
        f"secret = {secret.decode()}\n"
    )


def read_key_file(path: str) -> tuple[bytes, bytes]:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except OSError as exc:
        raise AuthenticationError(f"cannot read key file {path!r}: {exc.strerror}") from None
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        values[k.strip()] = v.strip().encode()
    public, secret = values.get("public"), values.get("secret")
    if not public or not secret or len(public) != 40 or len(secret) != 40:
        raise AuthenticationError(f"{path!r} is not a cluster key (make one with `python -m handoff.keygen`)")
    try:
        if zmq.curve_public(secret) != public:
            raise AuthenticationError(f"{path!r}: the public and secret keys do not match")
    except ValueError:
        raise AuthenticationError(f"{path!r}: the secret key is malformed") from None
    return public, secret


@dataclass
class Curve:
    public: bytes
    secret: bytes
    rejected: int = 0
    _auth: Any = field(default=None, repr=False)

    def start(self, ctx: zmq.Context) -> None:
        """Run the ZAP handler for ``ctx``: admit only the cluster's public key."""
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(ctx, log=logging.getLogger("handoff.zap"))
        auth.start()
        expected = self.public

        class ClusterKeyOnly:
            def callback(_, domain: str, key: bytes) -> bool:
                if key == expected:
                    return True
                self.rejected += 1
                log.warning("rejected a connection without the cluster key")
                return False

        auth.configure_curve_callback("*", credentials_provider=ClusterKeyOnly())
        self._auth = auth

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def server(self, sock: zmq.Socket) -> None:
        sock.curve_server = True
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public

    def client(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.public


def load_curve(config: NodeConfig) -> Curve | None:
    """The node's CURVE settings, or None; refuses an open non-loopback node without a key."""
    if config.key_file:
        public, secret = read_key_file(config.key_file)
        return Curve(public, secret)
    if not is_loopback(config.listen) and not config.insecure:
        raise HandoffError(
            f"refusing to listen on {config.listen} without a cluster key: anyone who can reach "
            "it could run code here. Make a key with `python -m handoff.keygen > cluster.key`, "
            "copy it to every node and pass --key-file cluster.key (handoff.start(key_file=...)), "
            "or pass --insecure (insecure=True) on a network you trust."
        )
    return None
