"""Which error an answer of the node becomes, and what it says (pure)."""

from __future__ import annotations

import json

import pytest

from treedrive.client import (
    ApiError,
    AuthError,
    BadRequest,
    Conflict,
    FetchFailed,
    Forbidden,
    InsufficientStorage,
    NotFound,
    ServerError,
    TooLarge,
    TreeDriveError,
)
from treedrive.client.errors import api_error


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequest),
        (401, AuthError),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (413, TooLarge),
        (502, FetchFailed),
        (507, InsufficientStorage),
        (500, ServerError),
        (503, ServerError),
        (405, ApiError),
        (418, ApiError),
    ],
)
def test_each_status_is_its_own_error_carrying_the_nodes_message(
    status: int, kind: type[ApiError]
) -> None:
    body = json.dumps({"error": "what the node said", "status": status}).encode()
    error = api_error(status, "Reason", body)
    assert type(error) is kind
    assert isinstance(error, TreeDriveError)
    assert (error.status, error.message, str(error)) == (
        status,
        "what the node said",
        "what the node said",
    )


@pytest.mark.parametrize("body", [b"", b"<html>busy</html>", b"[1]", b'{"status": 502}'])
def test_an_answer_without_the_nodes_error_says_its_status(body: bytes) -> None:
    error = api_error(502, "Bad Gateway", body)
    assert (type(error), error.message) == (FetchFailed, "502 Bad Gateway")
