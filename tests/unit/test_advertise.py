"""``--advertise``: a node reached through a relay tells peers the relay's address."""

from __future__ import annotations

import pytest

from handoff.config import NodeConfig
from handoff.node.__main__ import build_parser


def test_the_advertised_address_defaults_to_none_and_is_checked():
    assert NodeConfig(listen="tcp://127.0.0.1:0").advertise == ""
    config = NodeConfig(listen="tcp://10.0.0.1:5555", advertise="tcp://10.0.0.9:7000")
    assert config.advertise == "tcp://10.0.0.9:7000" and config.listen == "tcp://10.0.0.1:5555"
    with pytest.raises(ValueError, match="advertised address must look like tcp://HOST:PORT"):
        NodeConfig(advertise="10.0.0.9:7000")
    with pytest.raises(ValueError, match="needs the port peers connect to"):
        NodeConfig(advertise="tcp://10.0.0.9:0")


def test_the_command_line_takes_advertise():
    args = build_parser().parse_args(["--listen", "tcp://10.0.0.1:5555", "--advertise",
                                      "tcp://10.0.0.9:7000"])
    assert args.advertise == "tcp://10.0.0.9:7000"
    assert build_parser().parse_args([]).advertise == ""
