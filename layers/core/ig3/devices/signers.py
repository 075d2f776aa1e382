"""Which address must sign a device's results: the EVM key its ``did:peaq`` names.

The agent signs every result with its device key (``ig3_edge.signing``), the secp256k1 key of the
``did:peaq:0x<address>`` it registered with. Checking only that a result's signature matches the
``signer`` it carries proves nothing: any key signs consistently. The results path must compare the
recovered address with the registered identity's — otherwise an answer signed with a key the DID
does not name (a cheating mode of issue #13) is accepted.

- A thing's DID never changes (the device id is a hash of the DID, ``ig3.devices.service``), so an
  address, once read from the registry, is cached for the process's life (bounded).
- A thing the registry does not know, or a Substrate (SS58) DID, which names no secp256k1 key,
  yields None: the verifier then checks the signature's own consistency only (unregistered things
  cannot publish in AWS: IoT Core authenticates each by the certificate registration issued).

Pure module: the registry is read through an injected ``get_record(thing)``.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

_EVM_DID = re.compile(r"^did:peaq:(0x[0-9a-fA-F]{40})$")
CACHE_SIZE = 50_000


class RegisteredSigners:
    def __init__(self, get_record: Callable[[str], Any]):
        self._get = get_record
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, thing: str) -> str | None:
        with self._lock:
            address = self._cache.get(thing)
        if address is not None:
            return address
        record = self._get(thing)
        did = getattr(record, "did", None) if record is not None else None
        m = _EVM_DID.match(did) if isinstance(did, str) else None
        if m is None:
            return None
        with self._lock:
            self._cache[thing] = m.group(1)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return m.group(1)
