"""The functions' Ethereum paths run without web3 / eth-account / eth-abi / eth-utils (issue #9: they
are not in the api, results and deposits packages any more), and import libsecp256k1 only when used."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("web3", "eth_account", "eth_abi", "eth_utils", "eth_keys", "eth_typing", "cytoolz", "aiohttp", "requests")

SCRIPT = r"""
import sys, time
from datetime import datetime, timezone
import ig3.tasks.signatures, ig3.did.verify, ig3.did.resolvers, ig3.identity.wallet_login, ig3.billing.deposits
assert "coincurve" not in sys.modules, "coincurve imported before any signature is checked"
from coincurve import PrivateKey
from ig3.evm.keys import address_of_public_key, eip191_hash, recover_eip191
key = PrivateKey(b"\x11" * 32)
addr = address_of_public_key(key.public_key.format())
sig = key.sign_recoverable(eip191_hash(b"hello"), hasher=None)
sig = sig[:64] + bytes([sig[64] + 27])
assert recover_eip191(b"hello", sig) == addr
from ig3.did.local import make_device_identity
from ig3.did.verify import verify_did_signature
priv, did, doc = make_device_identity("light")
k = PrivateKey(bytes.fromhex(priv[2:]))
s = k.sign_recoverable(eip191_hash(b"register me"), hasher=None)
assert verify_did_signature(doc, b"register me", "0x" + (s[:64] + bytes([s[64] + 27])).hex()).startswith(doc.id)
from ig3.did.codec import Attribute, decode_attribute_return, encode_attribute_return, read_attribute_calldata
a = Attribute(b"n", b"v", 2**32 - 1, 5)
assert decode_attribute_return(encode_attribute_return(a)) == a
read_attribute_calldata(addr, b"name")
from ig3.wire import DeviceResult
from ig3.tasks.signatures import DeviceSignatureVerifier
from ig3.identity.wallet_login import RpcEip1271Checker
from ig3.billing.deposits import RpcChain
RpcChain("http://127.0.0.1:9"); RpcEip1271Checker({1: "http://127.0.0.1:9"})
bad = [m for m in %r if m in sys.modules]
assert not bad, bad
print("ok")
""" % (HEAVY,)


def test_signature_paths_import_no_web3_stack():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
