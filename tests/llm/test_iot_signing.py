"""The AWS IoT Core WebSocket URL the MQTT hub connects with: SigV4 query signing, checked against
an independent implementation of the SigV4 spec (canonical request -> string to sign -> HMAC chain)."""
from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl, quote

from botocore.credentials import ReadOnlyCredentials

from ig3.llm.edge import iot_presigned_path


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def test_presigned_path_is_valid_sigv4_with_token_appended_unsigned():
    host, region = "a1b2c3-ats.iot.eu-west-1.amazonaws.com", "eu-west-1"
    path = iot_presigned_path(host, region=region, credentials=ReadOnlyCredentials("AKIDEXAMPLE", "s3cr3t", "tok/en+="))
    assert path.startswith("/mqtt?")
    pairs = parse_qsl(path.split("?", 1)[1], keep_blank_values=True)
    assert pairs[-1] == ("X-Amz-Security-Token", "tok/en+=")  # appended after signing
    q = dict(pairs[:-1])
    assert q["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and q["X-Amz-SignedHeaders"] == "host"
    date = q["X-Amz-Date"][:8]
    assert q["X-Amz-Credential"] == f"AKIDEXAMPLE/{date}/{region}/iotdevicegateway/aws4_request"
    signed = {k: v for k, v in q.items() if k != "X-Amz-Signature"}
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(signed.items()))
    canonical = "\n".join(["GET", "/mqtt", canonical_query, f"host:{host}\n", "host", hashlib.sha256(b"").hexdigest()])
    scope = f"{date}/{region}/iotdevicegateway/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", q["X-Amz-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(b"AWS4s3cr3t", date), region), "iotdevicegateway"), "aws4_request")
    assert hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest() == q["X-Amz-Signature"]
