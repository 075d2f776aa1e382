"""``make chaos``: the network under faults, then proof that the money and the task states held.

``python -m chaos`` runs the local cloud (the same ``LocalCloud`` that ``ig3 up`` runs) with its own
Redis and Mosquitto (so they can be stopped), a fleet with cheating devices, and a load generator
in a second process that drives the public API; meanwhile it kills and restarts devices, restarts
the broker and stops Redis; then it checks the invariants (``chaos.checks``) and prints the figures.
"""
