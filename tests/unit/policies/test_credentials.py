"""Finding a credential header and the headers kept for upstream (``credentials.take_header``)."""

from __future__ import annotations

import pytest

from msa_gateway.policies.credentials import take_header

KEY = b"x-api-key"
DROP = frozenset({b"x-consumer-id"})
HEADERS = [(b"host", b"t"), (KEY, b"secret"), (b"accept", b"*/*")]


@pytest.mark.parametrize(
    ("headers", "strip", "found", "kept"),
    [
        (HEADERS, True, b"secret", [(b"host", b"t"), (b"accept", b"*/*")]),
        (HEADERS, False, b"secret", HEADERS),
        ([(KEY, b"first"), (b"a", b"1"), (KEY, b"second")], True, b"first", [(b"a", b"1")]),
        ([(KEY, b"first"), (KEY, b"second")], False, b"first", [(KEY, b"first"), (KEY, b"second")]),
        ([(b"x-consumer-id", b"forged"), (KEY, b"k")], True, b"k", []),
        ([(b"x-consumer-id", b"forged"), (KEY, b"k")], False, b"k", [(KEY, b"k")]),
        ([(b"host", b"t"), (b"x-consumer-id", b"forged")], True, None, [(b"host", b"t")]),
        ([], True, None, []),
    ],
)
def test_the_first_value_is_found_and_the_kept_list_leaves_out_what_it_should(
    headers: list[tuple[bytes, bytes]], strip: bool, found: bytes | None, kept: list[tuple[bytes, bytes]]
) -> None:
    value, rest = take_header(headers, KEY, strip, DROP)
    assert (value, rest) == (found, kept)
    assert rest is not headers  # a new list: a stage never edits the request's own headers in place
