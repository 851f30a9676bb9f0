"""The control commands say a :class:`~treedrive.client.TreeDriveError` in one line, escaped,
with exit 1 and no traceback (the click layer over ``treedrive.client``)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests.conftest import free_port
from treedrive.cli import cli
from treedrive.client import AuthError, BadNodeAddress, NodeUnreachable, NotFound
from treedrive.web.options import said


def test_an_error_of_the_client_is_one_escaped_line() -> None:
    assert said(NotFound(404, "no file \x1b[2Jab… in the catalogue")).message == (
        "no file \\x1b[2Jab… in the catalogue"
    )
    assert said(AuthError(401, "wrong API token")).message == "wrong API token"
    assert said(BadNodeAddress("nonsense")).message == (
        "--node 'nonsense' is not a node's address: give its HTTP URL, "
        "e.g. http://127.0.0.1:8280/ (or host:port)"
    )
    unreachable = NodeUnreachable("http://127.0.0.1:9/", "[Errno 111] Connection refused")
    assert said(unreachable).message == (
        "cannot reach the node at http://127.0.0.1:9/ ([Errno 111] Connection refused); "
        "is it running?"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["peers"],
        ["peers", "forget-key", "bob"],
        ["list", "local"],
        ["get", "deadbeef"],
        ["delete", "deadbeef"],
    ],
)
def test_every_command_says_the_client_error_in_one_line(args: list[str]) -> None:
    port = free_port()
    result = CliRunner().invoke(cli, [*args, "--node", f"127.0.0.1:{port}"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: cannot reach the node at http://127.0.0.1:{port} "
        "([Errno 111] Connection refused); is it running?\n"
    )
    nonsense = CliRunner().invoke(cli, [*args, "--node", "nonsense"])
    assert (nonsense.exit_code, nonsense.output.splitlines()) == (
        1,
        [
            "Error: --node 'nonsense' is not a node's address: give its HTTP URL, "
            "e.g. http://127.0.0.1:8280/ (or host:port)"
        ],
    )
