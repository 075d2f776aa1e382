"""CPU cost of DID verification — what every device registration and every DID login pays.

Cases (each call timed on its own with ``perf_counter_ns``; p50 / p99 / mean in microseconds):
- ``verify <key type>``: ``ig3.did.verify.verify_did_signature`` on a one-method document with a
  fresh real signature per call (secp256k1 EIP-191 recovery via eth-account/eth-keys, ed25519 via
  PyNaCl, sr25519 via py-sr25519-bindings). ``secp256k1 (multibase)`` also decompresses the
  document's public key to an address on each call.
- ``decode attribute``: the chain path's decoding of one precompile answer — ABI (eth-abi) +
  hex + protobuf + the pydantic model — for a typical one-method document.

Keys and documents are generated in-process; no network. Run:
``.venv/bin/python bench/bench_did.py [--n 2000]``. The machine is shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

N_DEFAULT = 2000


def _figures(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    return {
        "p50_us": s[len(s) // 2] / 1000,
        "p99_us": s[max(0, int(len(s) * 0.99) - 1)] / 1000,
        "mean_us": statistics.fmean(s) / 1000,
        "n": len(s),
    }


def _time_calls(fn, args: list) -> list[int]:
    out, clock = [], time.perf_counter_ns
    for a in args:
        t0 = clock()
        fn(a)
        out.append(clock() - t0)
    return out


def _identities():
    import sr25519
    from eth_account import Account
    from eth_account.messages import encode_defunct
    from eth_keys import keys
    from nacl.signing import SigningKey

    from ig3.did.ids import ss58_encode
    from ig3.did.model import ED25519_2020, SECP256K1_RECOVERY_2020, SR25519_2020, DidDocument, VerificationMethod
    from ig3.did.verify import MULTICODEC_ED25519, MULTICODEC_SECP256K1, MULTICODEC_SR25519, multibase_encode

    def doc(did: str, vm_type: str, key: str) -> DidDocument:
        vm = VerificationMethod(id=did + "#keys-1", type=vm_type, controller=did, public_key_multibase=key)
        return DidDocument(id=did, controller=did, verification_methods=(vm,), authentications=(vm.id,))

    acct = Account.create()
    evm_did = "did:peaq:" + acct.address
    compressed = keys.PrivateKey(acct.key).public_key.to_compressed_bytes()

    def secp_sign(m: bytes) -> str:
        return "0x" + acct.sign_message(encode_defunct(primitive=m)).signature.hex().removeprefix("0x")

    ed = SigningKey(os.urandom(32))
    ed_pub = bytes(ed.verify_key)
    sr_pub, sr_priv = sr25519.pair_from_seed(os.urandom(32))
    return {
        "secp256k1 (eip155)": (
            doc(evm_did, SECP256K1_RECOVERY_2020, f"eip155:3338:{acct.address}"),
            secp_sign,
        ),
        "secp256k1 (multibase)": (
            doc(evm_did, SECP256K1_RECOVERY_2020, multibase_encode(compressed, MULTICODEC_SECP256K1)),
            secp_sign,
        ),
        "ed25519": (
            doc("did:peaq:" + ss58_encode(ed_pub), ED25519_2020, multibase_encode(ed_pub, MULTICODEC_ED25519)),
            lambda m: "0x" + ed.sign(m).signature.hex(),
        ),
        "sr25519": (
            doc("did:peaq:" + ss58_encode(sr_pub), SR25519_2020, multibase_encode(sr_pub, MULTICODEC_SR25519)),
            lambda m: "0x" + sr25519.sign((sr_pub, sr_priv), m).hex(),
        ),
    }


def main(n: int = N_DEFAULT) -> dict[str, dict[str, float]]:
    from ig3.did.codec import Attribute, decode_attribute_return, decode_attribute_value, encode_attribute_return
    from ig3.did.codec import encode_attribute_value
    from ig3.did.messages import registration_message
    from ig3.did.verify import verify_did_signature

    results: dict[str, dict[str, float]] = {}
    for name, (doc, sign) in _identities().items():
        cases = []
        for i in range(n):
            msg = registration_message(domain="gw.example", did=doc.id, nonce=f"{i:032x}", chain_id=3338,
                                       expires_at=time.time() + 300)
            cases.append((msg, sign(msg)))
        for msg, sig in cases[:50]:  # warm-up (lazy imports, caches)
            verify_did_signature(doc, msg, sig, chain_id=3338)
        samples = _time_calls(lambda c, d=doc: verify_did_signature(d, c[0], c[1], chain_id=3338), cases)
        results[f"verify {name}"] = _figures(samples)

    doc = _identities()["secp256k1 (eip155)"][0]
    raw = encode_attribute_return(Attribute(doc.id.encode(), encode_attribute_value(doc), 2**32 - 1, 1))

    def decode(_: int) -> None:
        attr = decode_attribute_return(raw)
        decode_attribute_value(attr.value, created_ms=attr.created, validity_block=attr.validity)

    for i in range(50):
        decode(i)
    results["decode attribute (ABI+protobuf)"] = _figures(_time_calls(decode, list(range(n))))

    print(f"{'case':34} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9} {'n':>6}")
    for name, f in results.items():
        print(f"{name:34} {f['p50_us']:9.1f} {f['p99_us']:9.1f} {f['mean_us']:9.1f} {f['n']:6d}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=N_DEFAULT)
    main(parser.parse_args().n)
