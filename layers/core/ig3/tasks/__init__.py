"""AI Gateway tasks: the record, the pure state machine, its store, and the services that move it.

``PENDING -> ASSIGNED(device, attempt, deadline) -> COMPLETED | FAILED``; a failed, released or
expired assignment goes back to ``PENDING`` with the device excluded; after the edge attempts the
cloud; after that ``FAILED``. Every transition is a conditional write (see ``state`` and ``store``).
"""
