"""Deterministic synthetic recipe operations, for demos and benchmarks.

The same seed gives the same sequence of op *requests*; whether an update or
publish finds a recipe to act on depends only on what this generator made
before, so two runs with one seed write the same recipes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_DISHES = (
    "pancakes", "omelette", "risotto", "curry", "stew", "salad", "soup", "tart",
    "bread", "noodles", "dumplings", "pie", "gratin", "chili", "paella", "tacos",
)  # fmt: skip
_ADJECTIVES = (
    "smoky", "quick", "lemony", "spicy", "creamy", "rustic", "golden", "herby",
    "crispy", "summer", "winter", "garlicky", "sweet", "savoury",
)  # fmt: skip
_INGREDIENTS = (
    "flour", "egg", "milk", "butter", "rice", "onion", "garlic", "tomato", "basil",
    "lentils", "chickpeas", "potato", "carrot", "lemon", "cheese", "pepper", "salt",
)  # fmt: skip
_STEPS = ("whisk", "fold", "simmer", "bake", "roast", "chop", "fry", "stir", "rest", "season")


@dataclass(frozen=True, slots=True)
class GeneratedOp:
    kind: str  # "create" | "update" | "publish" | "delete"
    target: int | None  # index among this generator's created recipes, None for create
    name: str
    ingredients: str
    instructions: str


class WorkloadGenerator:
    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self._created = 0

    def next_op(self) -> GeneratedOp:
        rng = self._rng
        roll = rng.random()
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_DISHES)} #{self._created}"
        ingredients = ",".join(rng.sample(_INGREDIENTS, rng.randint(2, 6)))
        instructions = " then ".join(rng.choice(_STEPS) for _ in range(rng.randint(2, 5)))
        if self._created == 0 or roll < 0.7:
            self._created += 1
            return GeneratedOp("create", None, name, ingredients, instructions)
        target = rng.randrange(self._created)
        kind = "publish" if roll < 0.85 else "update" if roll < 0.95 else "delete"
        return GeneratedOp(kind, target, name, ingredients, instructions)
