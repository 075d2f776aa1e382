"""Dishonest devices for the simulated fleet: the *real* edge agent with its answers tampered.

Run as ``python -m ig3.local.cheaters --cheat MODE <the agent's own arguments>``. It lives in the
local cloud, not in the edge component, so no shipped agent carries a cheating switch.

- ``garbage``: the device skips the work's meaning — ``ok`` results carry random words (or
  random vectors for embeddings) with plausible usage, correctly signed by the device's key.
  The dispatch path accepts them (only audits can tell); they must be billed like any answer.
- ``forged``: the device answers but signs ``ok`` results with a key its DID does not name.
  The cloud must reject every one and re-run the task elsewhere; none may complete or bill.
"""

from __future__ import annotations

import random
import sys

MODES = ("garbage", "forged")
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "river",
    "quickly",
    "blue",
    "seven",
    "paper",
]


def install(mode: str, seed: int | None = None) -> None:
    """Patch ``ig3_edge.agent.Agent`` in this process so its ``ok`` results cheat per ``mode``."""
    from ig3_edge.agent import Agent
    from ig3_edge.signing import ResultSigner

    from ig3.wire import TaskOutput

    if mode not in MODES:
        raise ValueError(f"cheat mode must be one of {MODES}")
    rng = random.Random(seed)
    honest_ok = Agent._ok

    if mode == "garbage":

        def _ok(self, task, output, usage):  # type: ignore[no-untyped-def]
            if output.embeddings:
                fake = TaskOutput(embeddings=[[rng.uniform(-1, 1) for _ in v] for v in output.embeddings])
            else:
                fake = TaskOutput(
                    text=" ".join(rng.choice(_WORDS) for _ in range(max(1, usage.completion_tokens or 8))),
                    finish_reason=output.finish_reason or "length",
                )
            return honest_ok(self, task, fake, usage)

        Agent._ok = _ok  # type: ignore[method-assign]
        return

    from eth_account import Account

    wrong = ResultSigner(Account.create().key.hex())

    def _ok_forged(self, task, output, usage):  # type: ignore[no-untyped-def]
        honest = honest_ok(self, task, output, usage)
        return wrong.sign(honest.model_copy(update={"signer": None, "signature": None}))

    Agent._ok = _ok_forged  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--cheat":
        print(
            "usage: python -m ig3.local.cheaters --cheat {garbage,forged} <agent arguments>", file=sys.stderr
        )
        return 2
    install(args[1])
    from ig3_edge.main import main as agent_main

    return agent_main(args[2:])


if __name__ == "__main__":
    sys.exit(main())
