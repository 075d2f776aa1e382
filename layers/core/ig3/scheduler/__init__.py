"""Topology-aware scheduler (issue #5): pure decision core + Redis live state.

- ``core``: filter, score, draw — pure, no I/O (hypothesis-tested).
- ``live``: ``LiveState``, the Redis adapter (heartbeat TTLs, free-capacity indexes, reservations).
- ``scheduler``: ``Scheduler.place`` / ``release`` tie them together in two round trips at most.
- ``view``: the dispatcher's short-lived copy of each index head (one round trip for requests
  without a client location).
"""

from ig3.scheduler.core import (
    Candidate,
    Decision,
    ModelOffer,
    Placement,
    PlacementRequest,
    Scored,
    Weights,
    decide,
    haversine_km,
)
from ig3.scheduler.live import LiveState
from ig3.scheduler.scheduler import Outcome, Scheduler

__all__ = [
    "Candidate",
    "Decision",
    "LiveState",
    "ModelOffer",
    "Outcome",
    "Placement",
    "PlacementRequest",
    "Scheduler",
    "Scored",
    "Weights",
    "decide",
    "haversine_km",
]
