"""peaq DIDs (issue #4): identifiers, the document model and its protobuf/ABI codecs, resolvers
(peaq chain via web3, local DynamoDB registry) and signature verification.

Stable entry points for other modules: ``ig3.did.verify.verify_did_signature`` and
``ig3.did.resolvers.resolver_from_env``. Nothing here imports web3 or eth-account at import time.
"""
