"""Verifiable work (issue #13): audit sampling, re-scoring verdicts, device reputation and quarantine.

Pure core (``verdict``, ``reputation``, ``policy``, ``service``) with no AWS imports; adapters:
``store`` (Redis), ``rescorer`` (the cloud's reference llama.cpp copy, via ``ig3_edge.scoring``).
"""
