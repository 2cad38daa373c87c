"""Load the pipeline configuration: dataclass defaults ← recipe files ← CLI flags, bounded, merged, validated."""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import yaml

from dfprep.config import paths
from dfprep.config.schema import (ADAPTER_OPTIONS, COMMON_DATASET_KEYS, MAP_METHODS, AlignmentConfig, CamConfig,
                                  DatasetConfig, DetectionConfig, OutputConfig, PipelineConfig, RayConfig,
                                  SamplingConfig)
from dfprep.errors import ConfigError, one_line

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+; only the annotations need it
    from importlib.resources.abc import Traversable


# Keys a recipe may use besides the stage sections.
_META_KEYS = {"extends", "description"}


def _expected_name(tp: Any) -> str:
    """Human name of a type annotation for error messages."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_expected_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"list of {_expected_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is typing.Literal:
        return f"one of {', '.join(map(str, typing.get_args(tp)))}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def shown(value: Any) -> str:
    """A bounded repr for error messages: a hostile value never becomes a gigabyte of text."""
    return _SHORT.repr(value)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it in the dataclass's form (lists → tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_expected_name(tp)}, got {shown(value)}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is typing.Literal:
        if any(type(value) is type(choice) and value == choice for choice in typing.get_args(tp)):
            return value
        raise ConfigError(f"{where}: expected {_expected_name(tp)}, got {shown(value)}")
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            item = typing.get_args(tp)[0]
            return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_expected_name(tp)}, got {type(value).__name__} {shown(value)}")


def _build_section(cls: type, values: Mapping[str, Any], source: str, section: str) -> Any:
    """Instantiate one stage dataclass from a mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{section}.{unknown[0]}' (known keys: {', '.join(sorted(known))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{source}: {section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


_SECTION_TYPES: dict[str, type] = {
    "dataset": DatasetConfig,
    "sampling": SamplingConfig,
    "detection": DetectionConfig,
    "alignment": AlignmentConfig,
    "output": OutputConfig,
    "ray": RayConfig,
    "cam": CamConfig,
}


# A recipe is a few hundred bytes; these bounds stop a hostile file (a YAML "billion laughs" alias bomb
# expands 9 aliases × 9 levels into 43 million strings) long before it costs memory.
MAX_RECIPE_BYTES = 1_000_000
MAX_YAML_NODES = 10_000  # after expanding aliases; pipelines.yaml holds 99, a recipe 7-25
MAX_YAML_DEPTH = 100  # a recipe nests 3 levels; checked here since libyaml only limits it from PyYAML 6.0.4
# libyaml's parser (when PyYAML has it) is fast and refuses nesting deeper than 1000 levels by itself.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _children(node: yaml.Node) -> list[yaml.Node]:
    """A YAML node's direct sub-nodes (a mapping's keys and values)."""
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def expanded_size(root: yaml.Node, limit: int = MAX_YAML_NODES) -> int:
    """Nodes the document holds once every alias is expanded, capped at limit + 1 (a cycle is over the limit)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # ancestors of the node being visited
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            open_nodes.discard(id(node))
            sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(child)] for child in _children(node)))
        elif id(node) in open_nodes:
            return limit + 1
        elif id(node) not in sizes:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))
    return sizes[id(root)]


def too_deep(root: yaml.Node, limit: int = MAX_YAML_DEPTH) -> bool:
    """Whether any node sits more than `limit` levels down (iterative: a deep document cannot exhaust the stack)."""
    stack, seen = [(root, 1)], set()
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if id(node) not in seen:  # an alias revisits a node; its depth was already checked
            seen.add(id(node))
            stack.extend((child, depth + 1) for child in _children(node))
    return False


def safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load with bounds: no python tags, no alias bomb, no nesting deep enough to exhaust the stack."""
    loader = _SAFE_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if too_deep(node):
            raise ConfigError(f"{where}: YAML nested too deeply; refusing it")
        if expanded_size(node) > MAX_YAML_NODES:
            raise ConfigError(f"{where}: more than {MAX_YAML_NODES} YAML values once aliases are expanded "
                              "(an alias bomb?); refusing it")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(exc):
            raise ConfigError(f"{where}: YAML nested too deeply; refusing it") from None
        raise ConfigError(f"{where}: not valid YAML ({one_line(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply; refusing it") from None
    finally:
        loader.dispose()


def read_yaml(path: Path | Traversable) -> dict[str, Any]:
    """Load a pipeline YAML file safely (no python tags, bounded size and expansion); an empty file is {}."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_RECIPE_BYTES // 1_000_000} MB; a recipe is a few lines of YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    data = safe_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge section mappings: keys in `top` win, sections merge key by key."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _check_layer(data: Mapping[str, Any], source: str) -> None:
    """Reject unknown top-level sections and non-mapping sections in one file."""
    for key, value in data.items():
        if key in _META_KEYS:
            continue
        if key not in _SECTION_TYPES:
            raise ConfigError(
                f"{source}: unknown section '{key}' (known: {', '.join(sorted(_SECTION_TYPES))})"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: section '{key}' must be a mapping, got {type(value).__name__}")


def recipe_path(name: str) -> Path | Traversable:
    """Resolve an explicit .yaml path, else a recipe name: the first NAME.yaml along the recipe search path."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    if "/" not in name and "\\" not in name and name not in ("", ".", ".."):
        for folder in paths.recipe_dirs():
            path = folder / f"{name}.yaml"
            if path.is_file():
                return path
    raise ConfigError(f"unknown pipeline '{name}' (available: {', '.join(available_recipes())}; "
                      f"looked in {paths.shown_dirs(paths.recipe_dirs())})")


def available_recipes() -> list[str]:
    """Names of the recipes along the search path (user folders and the package)."""
    names = set()
    for folder in paths.recipe_dirs():
        if folder.is_dir():
            names.update(p.name[:-len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml") and p.is_file())
    return sorted(names)


def _recipe_layers(name: str, seen: tuple[str, ...] = ()) -> list[tuple[dict[str, Any], str]]:
    """A recipe and the recipes it extends, base first, each with its file name for errors."""
    path = recipe_path(name)
    if str(path) in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle ({' → '.join(seen + (str(path),))})")
    data = read_yaml(path)
    parents = data.get("extends") or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: extends: expected a recipe name or list of names")
    layers: list[tuple[dict[str, Any], str]] = []
    for parent in parents:
        layers.extend(_recipe_layers(parent, seen + (str(path),)))
    layers.append((data, str(path)))
    return layers


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` from the command line; the value is parsed as YAML (safe)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), safe_yaml(raw, f"--set {key.strip()}") if raw.strip() else None


def load_config(recipe: str | None = None, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Resolve the dataclass defaults ← recipe chain ← overrides (dotted keys, e.g. sampling.frames) into a config."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for data, source in _recipe_layers(recipe) if recipe else []:
        _check_layer(data, source)
        layer = {k: v for k, v in data.items() if k not in _META_KEYS}
        origin.update({f"{s}.{k}": source for s, v in layer.items() for k in v})
        merged = _deep_merge(merged, layer)
    flags: dict[str, dict[str, Any]] = {}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        flags.setdefault(section, {})[key] = value
        origin[dotted] = "command line"
    _check_layer(flags, "command line")
    merged = _deep_merge(merged, flags)
    return _build(merged, origin)


def _build(merged: Mapping[str, Any], origin: Mapping[str, str]) -> PipelineConfig:
    """Instantiate every section, naming the file a bad key came from."""
    sections = {}
    for section, cls in _SECTION_TYPES.items():
        values = merged.get(section, {})
        for key in values:
            source = origin.get(f"{section}.{key}", "config")
            _build_section(cls, {key: values[key]}, source, section)  # pinpoint the file of a bad key
        sections[section] = _build_section(cls, values, "config", section)
    config = PipelineConfig(**sections)
    validate(config, origin)
    return config


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts: [low, high] (`low` excluded when open), plus 0 when `off` names it."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False
    off: str = ""  # what 0 means when 0 lies outside the range (e.g. "full size")

    def admits(self, value: float) -> bool:
        """Whether a value is allowed (NaN never is)."""
        if self.off and value == 0:
            return True
        above = self.low < value if self.open_low else self.low <= value
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        """`(0, 1000]`, `[16, 2048]`, `0 (full size) or [64, 16384]`."""
        low, high = (f"{int(v)}" if float(v).is_integer() else f"{v:g}" for v in (self.low, self.high))
        text = f"{'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        return f"0 ({self.off}) or {text}" if self.off else text


# Every numeric key and what it accepts: outside these a run would "succeed" with useless output (black
# crops at scale 0, rotated crops at scale < 0, every video a timeout at 0 s, 13 MB crops at size 20000).
RANGES: dict[tuple[str, str], Range] = {
    ("dataset", "val_fraction"): Range(0, 1, open_high=True),
    ("dataset", "seed"): Range(0, 2**32 - 1),
    ("dataset", "dfdc_val_parts"): Range(0, 10_000),
    ("sampling", "frames"): Range(1, 10_000),
    ("sampling", "stride"): Range(1, 100_000),
    ("sampling", "fps"): Range(0, 1000, open_low=True),
    ("sampling", "max_frames"): Range(0, 1_000_000),
    ("sampling", "neighbour_retry"): Range(0, 100),
    ("sampling", "video_timeout_s"): Range(1, 86_400),
    ("detection", "working_size"): Range(64, 16_384, off="full size"),
    ("detection", "upsample"): Range(0, 3),
    ("detection", "min_score"): Range(-10, 10),
    ("detection", "track_window"): Range(1, 10),
    ("detection", "identity_frames"): Range(1, 1000),
    ("alignment", "size"): Range(16, 2048),
    ("alignment", "scale"): Range(0.1, 10),
    ("alignment", "context_scale"): Range(1, 10, off="no context crop"),
    ("output", "quality"): Range(1, 100),
    ("output", "videos_per_shard"): Range(1, 100_000),
    ("ray", "workers"): Range(0, 4096),
    ("ray", "threads"): Range(1, 256),
    ("ray", "in_flight_per_worker"): Range(1, 64),
    ("ray", "decode_threads"): Range(0, 64),
    ("ray", "task_retries"): Range(0, 100),
    ("ray", "actor_restarts"): Range(0, 100),
    ("cam", "threshold"): Range(0, 1, open_high=True),
}


def check_ranges(config: PipelineConfig, origin: Mapping[str, str] | None = None) -> None:
    """One-line error naming where the value came from, the key, the allowed range and the value."""
    for (section, key), allowed in RANGES.items():
        value = getattr(getattr(config, section), key)
        for item in value if isinstance(value, tuple) else (value,):
            if item is not None and not allowed.admits(item):
                source = (origin or {}).get(f"{section}.{key}")
                where = f"{source}: " if source else ""
                raise ConfigError(f"{where}{section}.{key}: must be {allowed.describe()}, got {item!r}")


def dataset_options(dataset: DatasetConfig, given: Iterable[str] | None = None,
                    origin: Mapping[str, str] | None = None) -> Any:
    """The adapter's own options dataclass; a key of another adapter is a one-line error naming where it came from.

    `given`: the dataset keys a recipe or flag set (the loader knows them); without it, keys off their default.
    """
    options_type = ADAPTER_OPTIONS.get(dataset.name or "")
    if options_type is None:
        raise ConfigError(f"dataset.name: unknown dataset {shown(dataset.name)} (known: {', '.join(ADAPTER_OPTIONS)})")
    own = [f.name for f in dataclasses.fields(options_type)]
    if given is None:
        given = [f.name for f in dataclasses.fields(dataset) if getattr(dataset, f.name) != f.default]
    for key in sorted(set(given) - set(own) - set(COMMON_DATASET_KEYS)):
        where = f"{(origin or {}).get(f'dataset.{key}')}: " if (origin or {}).get(f"dataset.{key}") else ""
        raise ConfigError(f"{where}dataset.{key} is not an option of the {dataset.name} adapter "
                          f"(its options: {', '.join(own) or 'none'}; every adapter: {', '.join(COMMON_DATASET_KEYS)})")
    return options_type(**{key: getattr(dataset, key) for key in own})


def validate(config: PipelineConfig, origin: Mapping[str, str] | None = None) -> None:
    """Value checks a type cannot express (ranges, adapter options); `origin` names the file (or flag) of each key."""
    check_ranges(config, origin)
    given = [key.partition(".")[2] for key in origin if key.startswith("dataset.")] if origin is not None else None
    if config.dataset.name in ADAPTER_OPTIONS:
        dataset_options(config.dataset, given, origin)
    for name in config.output.maps:
        if name not in MAP_METHODS:
            raise ConfigError(f"output.maps: unknown inline map method {name!r} (expected landmarks or cam)")
