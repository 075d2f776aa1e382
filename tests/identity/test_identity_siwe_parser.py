"""The EIP-4361 parser: exact round trip, and every single-field corruption rejected (hypothesis)."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ig3.identity import siwe
from ig3.identity.siwe import SiweMessage, SiweSyntaxError, parse
from identity_strategies import messages  # noqa: E402

ADDR = "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"  # a well-known EIP-55 address (WETH)

EXAMPLE = (
    "service.org wants you to sign in with your Ethereum account:\n"
    f"{ADDR}\n\n"
    "I accept the ServiceOrg Terms of Service: https://service.org/tos\n\n"
    "URI: https://service.org/login\n"
    "Version: 1\n"
    "Chain ID: 1\n"
    "Nonce: 32891756\n"
    "Issued At: 2021-09-30T16:25:24Z\n"
    "Resources:\n"
    "- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/\n"
    "- https://example.com/my-web2-claim.json"
)


def test_parses_the_eip_example():
    m = parse(EXAMPLE)
    assert m.domain == "service.org" and m.address == ADDR and m.chain_id == 1 and m.nonce == "32891756"
    assert m.statement == "I accept the ServiceOrg Terms of Service: https://service.org/tos"
    assert m.resources == ("ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",
                           "https://example.com/my-web2-claim.json")
    assert m.issued_at_dt.isoformat() == "2021-09-30T16:25:24+00:00"
    assert m.to_text() == EXAMPLE


def test_statement_forms_absent_empty_present_are_distinct():
    base = dict(domain="a.io", address=ADDR, uri="https://a.io", chain_id=1, nonce="12345678",
                issued_at="2024-01-01T00:00:00Z")
    texts = {st: SiweMessage(statement=st, **base).to_text() for st in (None, "", "hi")}
    assert f"{ADDR}\n\n\nURI" in texts[None]
    assert f"{ADDR}\n\n\n\nURI" in texts[""]
    assert f"{ADDR}\n\nhi\n\nURI" in texts["hi"]
    for st_, text in texts.items():
        assert parse(text).statement == st_


def test_scheme_prefix_and_optional_fields():
    text = EXAMPLE.replace("service.org wants", "https://service.org wants").replace(
        "Issued At: 2021-09-30T16:25:24Z",
        "Issued At: 2021-09-30T16:25:24.123+02:00\nExpiration Time: 2021-10-01T00:00:00Z\n"
        "Not Before: 2021-09-30T00:00:00Z\nRequest ID: req-1:@x")
    m = parse(text)
    assert (m.scheme, m.domain, m.request_id) == ("https", "service.org", "req-1:@x")
    assert m.expiration_time == "2021-10-01T00:00:00Z" and m.not_before == "2021-09-30T00:00:00Z"
    assert m.to_text() == text


@pytest.mark.parametrize("bad, why", [
    (EXAMPLE.replace(ADDR, ADDR.lower()), "EIP-55"),
    (EXAMPLE.replace("Version: 1", "Version: 2"), "Version"),
    (EXAMPLE.replace("Chain ID: 1", "Chain ID: 0x1"), "Chain ID"),
    (EXAMPLE.replace("Nonce: 32891756", "Nonce: 3289175"), "Nonce"),
    (EXAMPLE.replace("Nonce: 32891756", "Nonce: 32891756!"), "Nonce"),
    (EXAMPLE.replace("2021-09-30T16:25:24Z", "2021-02-30T16:25:24Z"), "Issued At"),
    (EXAMPLE.replace("2021-09-30T16:25:24Z", "2021-09-30 16:25:24Z"), "Issued At"),
    (EXAMPLE.replace("Chain ID", "Chain Id"), "Chain ID"),
    (EXAMPLE.replace("URI: https://service.org/login", "URI: https://service.org/log in"), "URI"),
    (EXAMPLE.replace("service.org wants", "service org wants"), "domain"),
    (EXAMPLE.replace("Terms of Service", 'Terms "of" Service'), "statement"),
    (EXAMPLE.replace("\n", "\r\n"), "CR LF"),
    (EXAMPLE + "\n", "unexpected"),
    (EXAMPLE.replace("Version: 1\nChain ID: 1", "Chain ID: 1\nVersion: 1"), "Version"),
    (EXAMPLE.replace("- https://example.com", "-https://example.com"), "unexpected"),
    (EXAMPLE.replace("Terms of Service", "Terms of Sérvice"), "ASCII"),
    ("", "too short"),
])
def test_rejects_with_a_reason(bad, why):
    with pytest.raises(SiweSyntaxError, match=re.escape(why) if why != "EIP-55" else "EIP-55"):
        parse(bad)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_round_trip(msg):
    text = msg.to_text()
    parsed = parse(text)
    assert parsed == msg
    assert parsed.to_text() == text


def _lines(text: str) -> tuple[list[str], dict[str, int]]:
    lines = text.split("\n")
    index = {}
    for i, line in enumerate(lines):
        for label in ("URI: ", "Version: ", "Chain ID: ", "Nonce: ", "Issued At: ", "Expiration Time: ",
                      "Not Before: ", "Request ID: "):
            if line.startswith(label) and label not in index:
                index[label] = i
    return lines, index


def _set(lines, i, value):
    out = list(lines)
    out[i] = value
    return "\n".join(out)


def corruptions(msg: SiweMessage) -> dict[str, list[str]]:
    """For each field: texts that differ from the valid one in that field only, and are invalid."""
    text = msg.to_text()
    lines, ix = _lines(text)
    head = lines[0][: -len(siwe.HEADER_SUFFIX)]
    c: dict[str, list[str]] = {
        "header": [_set(lines, 0, head + " wants you to sign in with your Ethereum account"),
                   _set(lines, 0, head + " wants you to sign into your Ethereum account:")],
        "domain": [_set(lines, 0, head + " x" + siwe.HEADER_SUFFIX), _set(lines, 0, head + "<" + siwe.HEADER_SUFFIX),
                   _set(lines, 0, siwe.HEADER_SUFFIX.lstrip())],
        "address": [_set(lines, 1, lines[1][:-1]), _set(lines, 1, lines[1][:-1] + "g"),
                    _set(lines, 1, lines[1][2:] + "00"), _set(lines, 1, lines[1].lower()
                                                             if lines[1] != lines[1].lower() else lines[1].upper())],
        "uri": [_set(lines, ix["URI: "], "URI: " + msg.uri + " x"), _set(lines, ix["URI: "], "URI: //no-scheme"),
                _set(lines, ix["URI: "], "URI:" + msg.uri)],
        "version": [_set(lines, ix["Version: "], "Version: 2"), _set(lines, ix["Version: "], "Version: 1.0")],
        "chain_id": [_set(lines, ix["Chain ID: "], "Chain ID: "), _set(lines, ix["Chain ID: "], "Chain ID: -1"),
                     _set(lines, ix["Chain ID: "], f"Chain ID: {msg.chain_id}a")],
        "nonce": [_set(lines, ix["Nonce: "], "Nonce: " + msg.nonce[:7]),
                  _set(lines, ix["Nonce: "], "Nonce: " + msg.nonce + "-")],
        "issued_at": [_set(lines, ix["Issued At: "], "Issued At: " + msg.issued_at.replace("T", " ")),
                      _set(lines, ix["Issued At: "], "Issued At: " + msg.issued_at[:5] + "13" + msg.issued_at[7:]),
                      _set(lines, ix["Issued At: "], "Issued At: " + msg.issued_at[:-1])],
        "labels": [_set(lines, ix["Nonce: "], lines[ix["Nonce: "]].replace("Nonce", "nonce")),
                   "\n".join(lines[: ix["Version: "]] + lines[ix["Version: "] + 1:])],
    }
    if msg.statement:
        c["statement"] = [_set(lines, 3, msg.statement + '"'), _set(lines, 3, msg.statement + "\n" + "x")]
    for label, field in (("Expiration Time: ", "expiration_time"), ("Not Before: ", "not_before")):
        if label in ix:
            c[field] = [_set(lines, ix[label], label + getattr(msg, field).replace("T", "_"))]
    if "Request ID: " in ix:
        c["request_id"] = [_set(lines, ix["Request ID: "], "Request ID: " + msg.request_id + " "),
                           _set(lines, ix["Request ID: "], "Request ID: " + msg.request_id + "%zz")]
    if msg.resources:
        i = lines.index("Resources:") + 1
        c["resources"] = [_set(lines, i, "- " + msg.resources[0] + " "), _set(lines, i, "-" + msg.resources[0])]
    return c


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.data())
def test_every_single_field_corruption_is_rejected(msg, data):
    options = corruptions(msg)
    field = data.draw(st.sampled_from(sorted(options)), label="field")
    bad = data.draw(st.sampled_from(options[field]), label="corrupted text")
    assert bad != msg.to_text()
    with pytest.raises(SiweSyntaxError):
        parse(bad)


def test_every_corruption_of_one_message_is_rejected():
    """Deterministic complement to the property: all corruptions of a fully-populated message."""
    msg = parse(EXAMPLE.replace("Issued At: 2021-09-30T16:25:24Z", "Issued At: 2021-09-30T16:25:24Z\n"
                                "Expiration Time: 2021-10-01T00:00:00Z\nNot Before: 2021-09-30T00:00:00Z\n"
                                "Request ID: abc"))
    for field, texts in corruptions(msg).items():
        for bad in texts:
            with pytest.raises(SiweSyntaxError):
                parse(bad)
            assert field
