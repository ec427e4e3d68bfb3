"""Run the synthetic workload (`--initial-ops`, `--op-interval`) against a node."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import trio

from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, OpKind, RecipeFields
from p2psync.node.config import NodeConfig
from p2psync.node.generator import WorkloadGenerator
from p2psync.node.node import Node
from p2psync.node.service import UserError

GENERATOR_BATCH = 1000  # ops signed and committed together during --initial-ops


async def run_workload(node: Node, config: NodeConfig, say: Callable[[str], None]) -> None:
    """Write the configured ops; `say` tells the user (scripts wait for "generated")."""
    generator = WorkloadGenerator(config.seed)
    made: list[tuple[str, int]] = []  # (recipe id, create seq) of generated recipes
    remaining = config.initial_ops
    while remaining > 0:
        count = min(GENERATOR_BATCH, remaining)
        await _generate(node, say, generator, made, count, publish=False)
        remaining -= count
        await trio.sleep(0)  # let the REPL and API answer during a big run
    if config.initial_ops:
        say(f"generated {config.initial_ops} initial ops")
    if config.op_interval is None:
        return
    while True:
        await trio.sleep(config.op_interval)
        await _generate(node, say, generator, made, config.ops_per_interval, publish=True)


async def _generate(
    node: Node,
    say: Callable[[str], None],
    generator: WorkloadGenerator,
    made: list[tuple[str, int]],
    count: int,
    *,
    publish: bool,
) -> None:
    # No wait_for_own_head here: the synthetic workload starts at once (the
    # benchmarks time it); only user writes wait to learn the node's own head.
    async with node.local_writes:
        seq = node.engine.next_own_seq()
        ops: list[Op] = []
        for _ in range(count):
            planned = generator.next_op()
            fields = RecipeFields(planned.name, planned.ingredients, planned.instructions)
            if planned.kind == "create":
                made.append((make_recipe_id(node.engine.me, seq + len(ops)), seq + len(ops)))
                ops.append(Op("create", made[-1][0], None, fields))
            else:
                # Targets always name an earlier create, so `made` already holds it.
                assert planned.target is not None
                kind = cast(OpKind, planned.kind)
                recipe_id, create_seq = made[planned.target]
                ops.append(Op(kind, recipe_id, create_seq, fields if kind == "update" else None))
        try:
            await node.append_ops(ops, publish=publish)
        except UserError as exc:
            say(f"workload generator: {exc}")
