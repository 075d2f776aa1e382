"""Pub/sub to users and dashboards: network aggregates, the summary, topic authorization.

See ``ig3.pubsub.aggregate`` (events -> bounded aggregates), ``ig3.pubsub.summary`` (the
document), ``ig3.pubsub.feed`` (when and where summaries are published) and ``ig3.pubsub.authz``
(who may subscribe to what).
"""
