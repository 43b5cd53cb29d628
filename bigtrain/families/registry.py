"""The registry: every model family bigtrain knows, as one object the config loader, the CLI and
the engine are handed (docs/design.md, "Families").

`Registry(families)` indexes the families' recipes and architectures and answers what the
config loader asks (the `bigtrain.config.Catalog` protocol). It imports no family itself:
bigtrain.families builds it from its FAMILIES dict and the `bigtrain.families` entry points.
"""

from __future__ import annotations

from typing import Any, Callable

from bigtrain.errors import ConfigError
from bigtrain.families.base import Arch, Family, Recipe


class Registry:
    def __init__(self, families: dict[str, Family]):
        self.families = dict(families)
        self.recipes: dict[str, type[Recipe]] = {}
        self.archs: dict[str, Arch] = {}
        for family_name, family in self.families.items():
            for name, cls in family.recipes.items():
                if name in self.recipes:
                    raise ConfigError(
                        "recipe", f"family {family_name!r} registers recipe {name!r}, which another family has"
                    )
                self.recipes[name] = cls
            for name, arch in family.archs.items():
                if name in self.archs:
                    raise ConfigError(
                        "model.g.arch",
                        f"family {family_name!r} registers architecture {name!r}, which another family has",
                    )
                self.archs[name] = arch

    # ---- what the config loader asks (bigtrain.config.Catalog) ------------------------------
    def recipe_names(self) -> list[str]:
        return list(self.recipes)

    def recipe_name(self, lookup: Callable[[tuple[str, ...]], Any]) -> Any:
        """The recipe the config layers select. `loss.type: began` under the default recipe
        means BEGAN (configs written before recipes existed select it that way)."""
        name = lookup(("recipe",))
        if name in (None, "gan") and lookup(("loss", "type")) == "began" and "began" in self.recipes:
            return "began"
        return name

    def sections(self, recipe: str) -> dict[str, type]:
        cls = self.recipes[recipe]
        own = {cls.section: cls.Options} if cls.section else {}
        return {**cls.sections, **own}

    def all_sections(self) -> dict[str, type]:
        return {name: section for recipe in self.recipes for name, section in self.sections(recipe).items()}

    def net_config(self, side: str, arch: Any, key: str) -> type:
        if not isinstance(arch, str) or arch not in self.archs:
            raise ConfigError(key, f"unknown architecture {arch!r}; choose one of {', '.join(sorted(self.archs))}")
        return self.archs[arch].config(side)

    def renamed(self) -> dict[str, tuple[str, Any]]:
        return {old: new for cls in self.recipes.values() for old, new in cls.renamed.items()}

    # ---- what the engine and the CLI ask -------------------------------------------------
    def recipe_class(self, cfg: Any) -> type[Recipe]:
        """The recipe class a resolved config names."""
        return self.recipes[cfg.recipe]

    def words(self) -> set[str]:
        """Every name that identifies a family, recipe, architecture or a recipe's own section
        (the engine must name none of them: tests/unit/test_boundaries.py). Shared sections
        (loss, augment) are ordinary words and left out."""
        return {
            *self.families,
            *self.recipes,
            *self.archs,
            *(cls.section for cls in self.recipes.values() if cls.section),
        }
