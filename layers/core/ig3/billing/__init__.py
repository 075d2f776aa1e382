"""Billing, metering and node rewards.

Money is integers of the smallest credit unit, the **micro-credit** (1 credit = 1,000,000
micro-credits). No float ever touches an amount: prices are configured as decimal strings,
parsed into ``Decimal``, and each request's cost is rounded **once**, up, to a whole
micro-credit (see ``ig3.billing.pricing``).

Modules:
- ``pricing``   price book (configuration) -> integer costs and estimates. Pure.
- ``models``    Hold, LedgerEntry, Balance, the UsageRecorded event. Pure.
- ``store``     the accounts/ledger/holds port and its in-memory fake.
- ``dynamo``    the DynamoDB adapter (conditional writes, TransactWriteItems).
- ``service``   BillingService: estimate, hold, settle, release, expire, credit, balance.
- ``usage``     the billing function's logic: one UsageRecorded event -> settle or release.
- ``reconcile`` proves balances == ledger sums; ``python -m ig3.billing.reconcile``.
- ``rewards``   node rewards per epoch (iG3's published formulas + regional fairness). Pure.
- ``deposits``  on-chain deposits (native + ERC-20 Transfer logs) -> credits, reorg-safe.
"""

MICRO_PER_CREDIT = 1_000_000
