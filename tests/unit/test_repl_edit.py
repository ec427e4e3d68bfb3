"""REPL: `edit r`, `unpublish r` and `ls r mine` (in tests/unit/test_repl.py's style)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from p2psync.cli.repl_commands import (
    Command,
    EditRecipe,
    ListRecipes,
    ListRemoteRecipes,
    ParseError,
    UnpublishRecipe,
    parse_command,
)
from p2psync.node.service import RecipeView, UserError
from tests.unit.test_repl import OTHER_ID, OWN_ID, FakeNode, run_lines


class EditingNode(FakeNode):
    def _mine(self, recipe_id: str) -> RecipeView:
        if recipe_id not in self.recipes:
            raise UserError(f"no recipe {recipe_id}", status=404)
        recipe = self.recipes[recipe_id]
        if recipe.author != OWN_ID:
            raise UserError(f"recipe {recipe_id} belongs to {recipe.author}", status=403)
        return recipe

    async def update_recipe(
        self,
        recipe_id: str,
        name: str | None = None,
        ingredients: str | None = None,
        instructions: str | None = None,
    ) -> RecipeView:
        old = self._mine(recipe_id)
        self.recipes[recipe_id] = replace(
            old,
            name=old.name if name is None else name,
            ingredients=old.ingredients if ingredients is None else ingredients,
            instructions=old.instructions if instructions is None else instructions,
        )
        return self.recipes[recipe_id]

    async def unpublish_recipe(self, recipe_id: str) -> RecipeView:
        self.recipes[recipe_id] = replace(self._mine(recipe_id), published=False)
        return self.recipes[recipe_id]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "edit r abc New name|flour,  milk|fry",
            EditRecipe("abc", "New name", "flour,  milk", "fry"),
        ),
        ("edit r abc |eggs|", EditRecipe("abc", None, "eggs", None)),
        ("EDIT R abc  Tea | | steep  well ", EditRecipe("abc", "Tea", None, "steep  well")),
        ("unpublish r abc", UnpublishRecipe("abc")),
        ("ls r mine", ListRecipes(mine=True)),
        ("ls r MINE", ListRecipes(mine=True)),
        ("ls r", ListRecipes()),
        ("ls r 12D3", ListRemoteRecipes("12D3")),
    ],
)
def test_parse_edit_unpublish_mine(line: str, expected: Command) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    ("line", "message_part"),
    [
        ("edit", "usage: edit r ID"),
        ("edit r", "usage: edit r ID"),
        ("edit r abc", "usage: edit r ID"),
        ("edit x abc a|b|c", "usage: edit r ID"),
        ("edit r abc a|b", "exactly three fields"),
        ("edit r abc a|b|c|d", "exactly three fields"),
        ("edit r abc ||", "nothing to change"),
        ("unpublish r", "usage: unpublish r ID"),
        ("unpublish abc", "usage: unpublish r ID"),
        ("ls r mine extra", "usage: ls"),
    ],
)
def test_parse_bad_edit_lines(line: str, message_part: str) -> None:
    with pytest.raises(ParseError) as error:
        parse_command(line)
    assert message_part in str(error.value)
    assert "\n" not in str(error.value)


async def test_edit_keeps_empty_fields_and_unpublish() -> None:
    node = EditingNode()
    await run_lines(node, "create r Pancakes|flour, milk|fry", "publish r r0000")
    output = await run_lines(node, "edit r r0000 Crêpes||fry thin")
    assert output == ["updated r0000 'Crêpes'"]
    recipe = node.recipes["r0000"]
    assert (recipe.name, recipe.ingredients, recipe.instructions) == (
        "Crêpes",
        "flour, milk",
        "fry thin",
    )
    assert await run_lines(node, "unpublish r r0000") == ["unpublished r0000 'Crêpes'"]
    assert not node.recipes["r0000"].published
    assert " no" in "\n".join(await run_lines(node, "ls r"))


async def test_edit_errors_are_one_line_and_the_repl_goes_on() -> None:
    node = EditingNode()
    node.recipes["theirs"] = RecipeView("theirs", "Soup", "water", "boil", OTHER_ID, True, 3)
    assert await run_lines(node, "edit r nope a||") == ["error: no recipe nope"]
    output = await run_lines(node, "edit r theirs Mine||", "unpublish r theirs")
    assert all(line.startswith("error: recipe theirs belongs to") for line in output)
    assert node.recipes["theirs"].name == "Soup" and node.recipes["theirs"].published


async def test_ls_r_mine_lists_only_own_recipes() -> None:
    node = EditingNode()
    assert await run_lines(node, "ls r mine") == [
        "no own recipes yet; create r NAME|INGREDIENTS|INSTRUCTIONS"
    ]
    node.recipes["theirs"] = RecipeView("theirs", "Soup", "water", "boil", OTHER_ID, True, 3)
    await run_lines(node, "create r Pancakes|flour|fry")
    mine = "\n".join(await run_lines(node, "ls r mine"))
    assert "Pancakes" in mine and "Soup" not in mine and mine.endswith("1 recipe")
    everything = "\n".join(await run_lines(node, "ls r"))
    assert "Pancakes" in everything and "Soup" in everything


async def test_help_lists_the_new_commands() -> None:
    output = "\n".join(await run_lines(FakeNode(), "help"))
    for word in ("edit r ID NAME|INGREDIENTS|INSTRUCTIONS", "unpublish r ID", "ls r mine"):
        assert word in output
