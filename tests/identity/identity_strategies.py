"""Hypothesis strategies for EIP-4361 messages (shared by the parser and login property tests)."""
from __future__ import annotations

import string
from datetime import datetime, timezone

from hypothesis import strategies as st

from ig3.identity.siwe import SiweMessage, to_checksum_address

STATEMENT_CHARS = string.ascii_letters + string.digits + " -._~!$&'()*+,;=:/?#[]@"
PCHAR_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"

hosts = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?(\.[a-z]{2,6}){0,2}", fullmatch=True)
ports = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
domains = st.one_of(st.builds(lambda h, p: h + p, hosts, ports),
                    st.sampled_from(["127.0.0.1:8080", "[::1]:8443", "user@example.com", "localhost"]))
segments = st.text(alphabet=PCHAR_CHARS, max_size=8)
uris = st.one_of(
    st.builds(lambda s, d, path, q: f"{s}://{d}" + "".join("/" + p for p in path) + (f"?{q}" if q else ""),
              st.sampled_from(["https", "http", "ipfs", "did+x"]), domains, st.lists(segments, max_size=3),
              st.text(alphabet=PCHAR_CHARS + "/?", max_size=8)),
    st.sampled_from(["urn:ietf:params:oauth:x", "did:peaq:0x1234", "mailto:a@b.c", "a:"]),
)


def _rfc3339(dt: datetime, frac: int, offset: str) -> str:
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return base + (f".{dt.microsecond:06d}"[: frac + 1] if frac else "") + offset


datetimes = st.builds(_rfc3339, st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2999, 12, 31)),
                      st.integers(0, 6), st.sampled_from(["Z", "+00:00", "-07:30", "+05:45"]))


@st.composite
def messages(draw) -> SiweMessage:
    return SiweMessage(
        scheme=draw(st.one_of(st.none(), st.sampled_from(["https", "http"]))),
        domain=draw(domains),
        address=to_checksum_address("0x" + draw(st.binary(min_size=20, max_size=20)).hex()),
        statement=draw(st.one_of(st.none(), st.just(""), st.text(alphabet=STATEMENT_CHARS, min_size=1, max_size=60))),
        uri=draw(uris),
        chain_id=draw(st.integers(0, 2**53)),
        nonce=draw(st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=32)),
        issued_at=draw(datetimes),
        expiration_time=draw(st.one_of(st.none(), datetimes)),
        not_before=draw(st.one_of(st.none(), datetimes)),
        request_id=draw(st.one_of(st.none(), st.text(alphabet=PCHAR_CHARS, max_size=20))),
        resources=draw(st.one_of(st.none(), st.lists(uris, max_size=3).map(tuple))),
    )


def utc_now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
