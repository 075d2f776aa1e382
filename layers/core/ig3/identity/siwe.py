"""A small, strict EIP-4361 (Sign-In with Ethereum) message parser and serializer.

Why our own: the ``siwe`` / ``signinwithethereum`` Python packages pin ``web3<8`` and
``eth-account<0.14`` and fail to import with ``abnf>=2.9``. The format is small enough to parse
exactly, and tests/identity proves interoperability with the reference JavaScript ``siwe`` +
``ethers`` packages.

Design decisions:
- The grammar is the EIP's ABNF, line by line, with the RFC 3986 URI / authority and RFC 3339
  date-time rules as anchored regular expressions (no backtracking across lines: each line is
  matched on its own, then the lines' order is checked). Anything the ABNF does not derive is
  rejected with a message naming the line, never "repaired".
- Three statement forms, as the EIP's ABNF and the reference implementation produce them:
  absent (``address LF LF LF URI``), empty (four LFs) and non-empty (``LF statement LF LF``).
- The address must carry a valid EIP-55 checksum (the EIP requires it for EOAs and the
  reference implementation rejects lower-case addresses too).
- ``SiweMessage.to_text()`` emits exactly the reference implementation's layout, so
  ``parse(m.to_text()) == m``. The signature is always verified over the text the client
  signed, never over a re-serialization.
- Pure: no AWS, no web3, no clock. Semantic checks (domain, chain, time, nonce, signature)
  live in ``ig3.identity.wallet_login``.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from Crypto.Hash import keccak  # pycryptodome (eth-hash's backend); far lighter than eth_utils

HEADER_SUFFIX = " wants you to sign in with your Ethereum account:"


class SiweSyntaxError(ValueError):
    """The text is not an EIP-4361 message (the reason names the offending part)."""


# --- RFC 3986 building blocks -------------------------------------------------------------
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_SEGMENT = rf"{_PCHAR}*"
_SEGMENT_NZ = rf"{_PCHAR}+"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_USERINFO = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*"
_REG_NAME = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*"
_IP_LITERAL = rf"\[(?P<ipl>[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+)\]"
_HOST = rf"(?:{_IP_LITERAL}|{_REG_NAME})"
_AUTHORITY = rf"(?:{_USERINFO}@)?{_HOST}(?::[0-9]*)?"
_QUERY = rf"(?:{_PCHAR}|[/?])*"
_HIER_PART = (rf"(?://(?P<authority>{_AUTHORITY})(?:/{_SEGMENT})*"
              rf"|/(?:{_SEGMENT_NZ}(?:/{_SEGMENT})*)?"
              rf"|{_SEGMENT_NZ}(?:/{_SEGMENT})*"
              r"|)")
_URI_RE = re.compile(rf"{_SCHEME}:{_HIER_PART}(?:\?{_QUERY})?(?:#{_QUERY})?")
_AUTHORITY_RE = re.compile(_AUTHORITY)

# --- RFC 3339 date-time (ABNF strings are case-insensitive: "T"/"t", "Z"/"z") -------------
_DATE_TIME_RE = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt](?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})"
    r"(?P<frac>\.[0-9]+)?(?:(?P<z>[Zz])|(?P<osign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))")

_ADDRESS_RE = re.compile(r"0x[0-9A-Fa-f]{40}")
# statement = 1*( reserved / unreserved / " " ): printable ASCII minus " % < > \ ^ ` { | }
_STATEMENT_RE = re.compile(rf"[{_UNRESERVED}{_SUB_DELIMS}:/?#\[\]@ ]+")
_NONCE_RE = re.compile(r"[A-Za-z0-9]{8,}")
_CHAIN_ID_RE = re.compile(r"[0-9]+")
_REQUEST_ID_RE = re.compile(rf"{_PCHAR}*")
_HEADER_RE = re.compile(rf"(?:(?P<scheme>{_SCHEME})://)?(?P<domain>.*){re.escape(HEADER_SUFFIX)}")


def _full(regex: re.Pattern[str], text: str) -> re.Match[str] | None:
    return regex.fullmatch(text)


def is_uri(text: str) -> bool:
    """RFC 3986 ``URI`` (absolute, with scheme)."""
    m = _full(_URI_RE, text)
    return bool(m) and _ip_literal_ok(m.group("ipl"))


def is_authority(text: str) -> bool:
    m = _full(_AUTHORITY_RE, text)
    return bool(m) and _ip_literal_ok(m.group("ipl"))


def _ip_literal_ok(literal: str | None) -> bool:
    if literal is None or literal.startswith("v"):
        return True
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        return False
    return True


def parse_datetime(text: str) -> datetime:
    """RFC 3339 ``date-time`` to an aware datetime (a leap second counts as :59.999999)."""
    m = _full(_DATE_TIME_RE, text)
    if not m:
        raise SiweSyntaxError(f"not an RFC 3339 date-time: {text!r}")
    second = int(m["s"])
    if second > 60:
        raise SiweSyntaxError(f"invalid seconds in date-time: {text!r}")
    micro = int((m["frac"][1:] + "000000")[:6]) if m["frac"] else 0
    if second == 60:
        second, micro = 59, 999999
    if m["z"]:
        tz = timezone.utc
    else:
        oh, om = int(m["oh"]), int(m["om"])
        if oh > 23 or om > 59:
            raise SiweSyntaxError(f"invalid offset in date-time: {text!r}")
        delta = timedelta(hours=oh, minutes=om)
        tz = timezone(-delta if m["osign"] == "-" else delta)
    try:
        return datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), second, micro, tzinfo=tz)
    except ValueError as exc:  # e.g. 2024-02-30, hour 24
        raise SiweSyntaxError(f"invalid date-time {text!r}: {exc}") from None


def to_checksum_address(address: str) -> str:
    """EIP-55 mixed-case checksum encoding of a 0x-prefixed 20-byte hex address."""
    hex_addr = address[2:].lower()
    digest = keccak.new(digest_bits=256, data=hex_addr.encode("ascii")).hexdigest()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(hex_addr))


def is_checksum_address(address: str) -> bool:
    return bool(_full(_ADDRESS_RE, address)) and to_checksum_address(address) == address


@dataclass(frozen=True)
class SiweMessage:
    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: str  # kept as written (RFC 3339); ``issued_at_dt`` is the parsed value
    version: str = "1"
    statement: str | None = None
    expiration_time: str | None = None
    not_before: str | None = None
    request_id: str | None = None
    resources: tuple[str, ...] | None = None
    scheme: str | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def issued_at_dt(self) -> datetime:
        return parse_datetime(self.issued_at)

    @property
    def expiration_time_dt(self) -> datetime | None:
        return parse_datetime(self.expiration_time) if self.expiration_time is not None else None

    @property
    def not_before_dt(self) -> datetime | None:
        return parse_datetime(self.not_before) if self.not_before is not None else None

    def to_text(self) -> str:
        """The EIP-4361 text, laid out exactly as the reference implementation prepares it."""
        origin = f"{self.scheme}://{self.domain}" if self.scheme else self.domain
        lines = [origin + HEADER_SUFFIX, self.address, ""]
        # absent: address LF LF LF; empty: address LF LF LF LF; else: address LF LF statement LF LF
        lines += [self.statement, ""] if self.statement is not None else [""]
        lines += [f"URI: {self.uri}", f"Version: {self.version}", f"Chain ID: {self.chain_id}",
                  f"Nonce: {self.nonce}", f"Issued At: {self.issued_at}"]
        if self.expiration_time is not None:
            lines.append(f"Expiration Time: {self.expiration_time}")
        if self.not_before is not None:
            lines.append(f"Not Before: {self.not_before}")
        if self.request_id is not None:
            lines.append(f"Request ID: {self.request_id}")
        if self.resources is not None:
            lines.append("Resources:")
            lines += [f"- {r}" for r in self.resources]
        return "\n".join(lines)


def validate(msg: SiweMessage) -> None:
    """Every field against its ABNF rule. Raises SiweSyntaxError."""
    if msg.scheme is not None and not _full(re.compile(_SCHEME), msg.scheme):
        raise SiweSyntaxError("invalid scheme")
    if not is_authority(msg.domain) or msg.domain == "":
        raise SiweSyntaxError("domain is not an RFC 3986 authority")
    if not _full(_ADDRESS_RE, msg.address):
        raise SiweSyntaxError("address must be 0x followed by 40 hex digits")
    if to_checksum_address(msg.address) != msg.address:
        raise SiweSyntaxError("address is not EIP-55 checksummed")
    if msg.statement and not _full(_STATEMENT_RE, msg.statement):
        raise SiweSyntaxError("statement has characters outside reserved / unreserved / space")
    if not is_uri(msg.uri):
        raise SiweSyntaxError("URI is not an RFC 3986 URI")
    if msg.version != "1":
        raise SiweSyntaxError("Version must be 1")
    if not isinstance(msg.chain_id, int) or isinstance(msg.chain_id, bool) or msg.chain_id < 0:
        raise SiweSyntaxError("Chain ID must be a non-negative integer")
    if not _full(_NONCE_RE, msg.nonce):
        raise SiweSyntaxError("Nonce must be at least 8 alphanumeric characters")
    for label, value in (("Issued At", msg.issued_at), ("Expiration Time", msg.expiration_time),
                         ("Not Before", msg.not_before)):
        if value is not None:
            try:
                parse_datetime(value)
            except SiweSyntaxError as exc:
                raise SiweSyntaxError(f"{label}: {exc}") from None
    if msg.request_id is not None and not _full(_REQUEST_ID_RE, msg.request_id):
        raise SiweSyntaxError("Request ID has characters outside pchar")
    for r in msg.resources or ():
        if not is_uri(r):
            raise SiweSyntaxError(f"resource is not an RFC 3986 URI: {r[:80]!r}")


_REQUIRED = (("URI: ", "uri"), ("Version: ", "version"), ("Chain ID: ", "chain_id"), ("Nonce: ", "nonce"),
             ("Issued At: ", "issued_at"))
_OPTIONAL = (("Expiration Time: ", "expiration_time"), ("Not Before: ", "not_before"),
             ("Request ID: ", "request_id"))


def parse(text: str) -> SiweMessage:
    """Parse an EIP-4361 message strictly. Raises SiweSyntaxError naming what is wrong."""
    if not isinstance(text, str):
        raise SiweSyntaxError("message must be a string")
    if "\r" in text:
        raise SiweSyntaxError("line breaks must be LF, not CR LF")
    if not text.isascii():
        raise SiweSyntaxError("message must be ASCII")
    lines = text.split("\n")
    if len(lines) < 9:
        raise SiweSyntaxError("message is too short to be EIP-4361")
    header = _full(_HEADER_RE, lines[0])
    if not header:
        raise SiweSyntaxError(f"line 1 must end with '{HEADER_SUFFIX.strip()}'")
    fields: dict[str, object] = {"scheme": header["scheme"], "domain": header["domain"], "address": lines[1]}
    if lines[2] != "":
        raise SiweSyntaxError("line 3 must be empty")
    # Statement forms: "LF statement LF LF" / empty statement "LF LF LF" / absent "LF LF".
    if lines[3] == "" and lines[4] == "" and lines[5].startswith("URI: "):
        fields["statement"], i = "", 5
    elif lines[3] == "" and lines[4].startswith("URI: "):
        fields["statement"], i = None, 4
    elif lines[3] != "" and lines[4] == "":
        fields["statement"], i = lines[3], 5
    else:
        raise SiweSyntaxError("expected an optional statement line between empty lines, then 'URI: '")
    for prefix, name in _REQUIRED:
        if i >= len(lines) or not lines[i].startswith(prefix):
            raise SiweSyntaxError(f"line {i + 1} must start with '{prefix.strip()}'")
        fields[name] = lines[i][len(prefix):]
        i += 1
    for prefix, name in _OPTIONAL:
        if i < len(lines) and lines[i].startswith(prefix):
            fields[name] = lines[i][len(prefix):]
            i += 1
    if i < len(lines) and lines[i] == "Resources:":
        i += 1
        resources = []
        while i < len(lines) and lines[i].startswith("- "):
            resources.append(lines[i][2:])
            i += 1
        fields["resources"] = tuple(resources)
    if i != len(lines):
        raise SiweSyntaxError(f"unexpected content at line {i + 1}")
    chain = str(fields["chain_id"])
    if not _full(_CHAIN_ID_RE, chain):
        raise SiweSyntaxError("Chain ID must be decimal digits")
    fields["chain_id"] = int(chain)
    return SiweMessage(**fields)  # type: ignore[arg-type]  # __post_init__ validates each field


__all__ = ["SiweMessage", "SiweSyntaxError", "parse", "parse_datetime", "to_checksum_address",
           "is_checksum_address", "is_uri", "is_authority"]
