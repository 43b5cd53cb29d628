"""Loading a config: defaults <- YAML file <- dotted `key.sub=value` overrides, merged by
OmegaConf against the schema of the recipe the layers name (Config plus the recipe's sections),
so an unknown key or a value of the wrong type is an error, and turned back into dataclasses,
whose checks name the key. The recipe's sections and the net section classes come from a
`Catalog` handed to it (the family registry, bigtrain.families.registry()): this module imports
no family. `bigtrain.families.load_config(path, overrides)` is the usual way in.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Protocol

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from bigtrain.config import Config, ModelConfig
from bigtrain.errors import ConfigError


def _to_object(merged: Any) -> Config:
    """Turn a merged OmegaConf tree into dataclasses, naming the key of a failed value check."""
    try:
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(getattr(exc, "full_key", "") or "config", _first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _last(layers: list[Any], path: tuple[str, ...], default: Any) -> Any:
    """The value at `path` in the last layer that sets it (not null), before validation."""
    value = default
    for layer in layers:
        node = OmegaConf.to_container(layer) if OmegaConf.is_config(layer) else layer
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            value = node
    return value


class Catalog(Protocol):
    """What the loader needs of the family registry (bigtrain.families.registry()), handed to it:
    this module imports no family, so every family can import it."""

    def recipe_name(self, lookup: Callable[[tuple[str, ...]], Any]) -> Any:
        """The recipe the layers select (`lookup(path)`: the last value set at path, or None)."""

    def recipe_names(self) -> list[str]: ...

    def sections(self, recipe: str) -> dict[str, type]:
        """The recipe's own top-level sections, name -> dataclass (its options, loss, ...)."""

    def all_sections(self) -> dict[str, type]:
        """Every section some recipe declares (to recognise an old save's untouched ones)."""

    def net_config(self, side: str, arch: Any, key: str) -> type:
        """The `side` ("g"/"d") section class of `arch`; ConfigError naming `key` if unknown."""

    def renamed(self) -> dict[str, tuple[str, Any]]:
        """Old dotted key -> (its new dotted key, its default), accepted for one release."""


# The shared NetConfig that every `model.g` / `model.d` section had before per-architecture
# classes; configs and checkpoints of that time hold every one of these keys (docs/design.md).
OLD_NET_DEFAULTS = {
    "arch": "dcgan",
    "width": 64,
    "depth": 2,
    "norm": "batch",
    "cond": "auto",
    "spectral_norm": False,
    "h_dim": 64,
    "mbstd_group": 0,
    "mbstd_channels": 1,
    "pack": 1,
}  # G's; D's norm was none
DEFAULT_ARCH = "dcgan"  # model.g.arch / model.d.arch when no layer sets them
SIDE_NAMES = {"g": "generator", "d": "discriminator"}


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _drop_old_defaults(layer: dict, nets: dict[str, type]) -> dict:
    """`layer` without the untouched fields of an old shared-NetConfig section.

    A net section holding every OLD_NET_DEFAULTS key was written before per-architecture
    classes (a checkpoint's config or a run's config.yaml). A key its class does not have is
    dropped when it holds the old default, i.e. nobody set it; any other value stays and is
    refused like a key set by hand. New sections never hold all those keys, so this exception
    does not reach them (docs/design.md, "Network config per architecture").
    """
    model = layer.get("model")
    if not isinstance(model, dict):
        return layer
    model = dict(model)
    for side, cls in nets.items():
        net = model.get(side)
        if isinstance(net, dict) and net.keys() >= OLD_NET_DEFAULTS.keys():
            old = {**OLD_NET_DEFAULTS, "norm": "none"} if side == "d" else OLD_NET_DEFAULTS
            keep = set(_fields(cls))
            model[side] = {k: v for k, v in net.items() if k in keep or k not in old or v != old[k]}
    return {**layer, "model": model}


def _move_renamed(layer: dict, recipe: str, sections: dict[str, type], catalog: Catalog, saved: bool) -> dict:
    """`layer` with each old spelling of a key (catalog.renamed()) moved to its new place, with a
    warning naming the new key (none for a saved config, which the user did not write). An old
    key whose new section this recipe lacks is dropped when it holds its default, else refused."""
    for old, (new, default) in catalog.renamed().items():
        section, _, key = old.partition(".")
        values = layer.get(section)
        if not isinstance(values, dict) or key not in values:
            continue
        values = dict(values)
        value = values.pop(key)
        layer = {**layer, section: values}
        new_section, _, new_key = new.partition(".")
        if new_section not in sections:
            if value != default:
                raise ConfigError(old, f"is now {new}, which recipe {recipe} does not read")
            continue
        if not saved:
            warnings.warn(
                f"{old} is now {new}; the old spelling is read for one more release", FutureWarning, stacklevel=4
            )
        target = dict(layer.get(new_section) or {})
        target.setdefault(new_key, value)
        layer = {**layer, new_section: target}
    return layer


def _drop_untouched_sections(layer: dict, sections: dict[str, type], catalog: Catalog) -> dict:
    """A saved config without the sections its recipe no longer declares, where they hold their
    defaults (older saves held every section; e.g. an image-to-image run's unused `loss`)."""
    known = catalog.all_sections()
    unused = [
        name
        for name in layer
        if name in known
        and name not in sections
        and isinstance(layer[name], dict)
        and layer[name] == dataclasses.asdict(known[name]())
    ]
    return {k: v for k, v in layer.items() if k not in unused}


def _reason(exc: OmegaConfBaseException, key: str, nets: dict[str, type]) -> str:
    """OmegaConf's message, or for a key a net section's class lacks, which keys it has."""
    parts = key.split(".")
    if isinstance(exc, ConfigKeyError) and len(parts) == 3 and parts[0] == "model" and parts[1] in nets:
        cls = nets[parts[1]]
        return f"the {cls.arch} {SIDE_NAMES[parts[1]]} has no key {parts[2]!r}; its keys: {', '.join(_fields(cls))}"
    return _first_line(exc)


def schema(recipe: str, catalog: Catalog) -> type:
    """The Config dataclass for `recipe`: Config plus the recipe's sections (its options, and the
    shared ones it reads, such as loss)."""
    return _schema(recipe, tuple(catalog.sections(recipe).items()))


@functools.lru_cache(maxsize=None)
def _schema(recipe: str, sections: tuple[tuple[str, type], ...]) -> type:
    # one class per recipe and sections, so that two configs of one recipe compare equal
    if not sections:
        return Config
    return dataclasses.make_dataclass(
        f"Config_{recipe}", [(name, cls, field(default_factory=cls)) for name, cls in sections], bases=(Config,)
    )


def _merge(layers: list[Any], origin: str, catalog: Catalog, saved: bool = False) -> Any:
    layers = [OmegaConf.to_container(layer) if OmegaConf.is_config(layer) else layer for layer in layers]
    recipe = catalog.recipe_name(lambda path: _last(layers, path, None))
    if recipe is None:
        recipe = Config.recipe
    if not isinstance(recipe, str):
        raise ConfigError("recipe", f"must be a name (in {origin})")
    if recipe not in catalog.recipe_names():
        raise ConfigError(
            "recipe", f"unknown recipe {recipe!r}; choose one of {', '.join(sorted(catalog.recipe_names()))}"
        )
    sections = catalog.sections(recipe)
    # each net section's class follows its arch, the last one the layers set
    nets = {
        side: catalog.net_config(side, _last(layers, ("model", side, "arch"), DEFAULT_ARCH), f"model.{side}.arch")
        for side in SIDE_NAMES
    }
    merged = OmegaConf.structured(schema(recipe, catalog)(model=ModelConfig(g=nets["g"](), d=nets["d"]())))
    for layer in layers:
        layer = _move_renamed(_drop_old_defaults(layer, nets), recipe, sections, catalog, saved)
        if saved:
            layer = _drop_untouched_sections(layer, sections, catalog)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", "") or origin
            raise ConfigError(key, f"{_reason(exc, key, nets)} (in {origin})") from None
    merged.recipe = recipe  # the name it resolved to (an alias, such as loss.type began, becomes its recipe)
    return merged


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a plain dict, with one clear error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "top level must be a mapping of sections")
    return data


def parse_overrides(overrides: list[str]) -> list[Any]:
    """`key.sub=value` strings -> OmegaConf layers (values parsed as YAML)."""
    layers = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item, "override must look like key.sub=value")
        try:
            layers.append(OmegaConf.from_dotlist([f"{key.strip()}={value}"]))
        except OmegaConfBaseException as exc:
            raise ConfigError(key, _first_line(exc)) from None
    return layers


def load_config(path: str | Path | None, overrides: list[str] | None, catalog: Catalog) -> Config:
    """Defaults <- YAML file <- overrides, validated against the recipe's schema from `catalog`
    (bigtrain.families.load_config passes the registry). Raises ConfigError naming the key."""
    layers: list[Any] = []
    if path is not None:
        layers.append(load_yaml(path))
    extra = parse_overrides(overrides or [])
    _merge(layers, str(path) if path else "defaults", catalog)  # names the file for errors in the file
    return _to_object(
        _merge([*layers, *extra], "command line" if extra else str(path) if path else "defaults", catalog)
    )


def config_from_dict(data: dict, catalog: Catalog) -> Config:
    """Validate a saved config given as a nested dict (e.g. read back from a checkpoint)."""
    return _to_object(_merge([data], "dict", catalog, saved=True))
