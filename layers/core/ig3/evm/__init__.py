"""The few EVM primitives the Lambda functions need, without web3 / eth-account (issue #9).

Why our own: the functions only *verify* and *read* — EIP-191 signature recovery, EIP-55
addresses, keccak, a handful of ABI encodings and JSON-RPC reads. web3 + eth-account bring
~55 MB unzipped (cryptography, cytoolz, aiohttp, ckzg, bitarray, regex, ...) and ~0.6 s of import
to do that; these modules need libsecp256k1 (``coincurve``) and keccak (``pycryptodome``) only,
and the stdlib's ``http.client``:

- ``ig3.evm.keys``: keccak256, EIP-55 checksums, public key -> address, EIP-191 ``personal_sign``
  recovery with eth-account's exact acceptance rules (v in {0, 1, 27, 28} or EIP-155 style >= 35;
  r and s below the curve order).
- ``ig3.evm.abi``: strict ABI encoding/decoding of the static and dynamic types we use (address,
  bool, uintN, bytesN, bytes, string, tuples).
- ``ig3.evm.rpc``: a JSON-RPC 2.0 client over one kept-alive HTTP(S) connection per thread.

The tests check each against the reference implementations (eth-account, eth-keys, eth-abi,
web3's test chain) which stay development dependencies. Pure logic, no AWS imports; coincurve and
pycryptodome are imported on first use.
"""
