"""Frozen, typed pipeline configuration: pipelines.yaml defaults ← recipe files ← CLI flags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from dfprep import paths
from dfprep.errors import ConfigError, one_line


@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset to catalog and how to resolve its labels and splits."""

    name: str | None = None
    root: str | None = None
    splits: str | None = None  # FF++ split folder (train/val/test.json); default <root>/splits
    compressions: tuple[str, ...] = ()  # keep only these (e.g. c23); empty keeps all
    methods: tuple[str, ...] = ()  # keep only these methods; empty keeps all
    dfd_split: str = "test"  # FF++ DeepFakeDetection has no official split
    val_fraction: float = 0.1  # Celeb-DF/folder: share of identities held out for val
    dfdc_val_parts: tuple[int, ...] = ()  # DFDC train parts used as val
    ffpp_root: str | None = None  # DeeperForensics reals live in FF++
    default_split: str = "train"  # folder adapter, when neither folders nor CSV give one
    seed: int = 0  # deterministic identity → split assignment


@dataclass(frozen=True)
class SamplingConfig:
    """Which frames of each video become samples."""

    mode: str = "uniform"  # uniform | stride | fps | all | keyframes
    frames: int = 32  # uniform: N frames, linspace over the video
    stride: int = 10  # stride: every k-th frame
    fps: float = 1.0  # fps: r frames per second
    max_frames: int = 0  # cap for stride/fps/all/keyframes (0 = no cap)
    neighbour_retry: int = 2  # a faceless frame is retried at ±1..k before it counts as missing
    pair_with_original: bool = True  # fakes reuse their original's frame indices
    video_timeout_s: float = 600.0  # wall-clock limit per video


@dataclass(frozen=True)
class DetectionConfig:
    """Face detection, tracking, selection and landmarks."""

    detector: str = "hog"  # hog | cnn
    working_size: int = 640  # longer side of the frame the detector sees (0 = full size)
    upsample: int = 1
    min_score: float = 0.0  # detector score below which a detection is dropped (dlib's own threshold)
    tracking: bool = True  # search near the previous box before a full-frame detection
    track_window: float = 2.0  # search window side = previous box side × this
    select: str = "largest"  # largest | all | centre
    landmarks: str = "dlib68"  # registry name or path of the shape predictor
    identity: bool = False  # 128-D dlib face descriptor per track, median per video (for `dfprep leakage`)
    identity_frames: int = 8  # descriptors computed per track (spread over the video)


@dataclass(frozen=True)
class AlignmentConfig:
    """How a face becomes a crop."""

    preset: str = "deepfakebench"  # deepfakebench | caddm | box
    size: int = 256
    scale: float = 1.3  # face-to-crop zoom (deepfakebench 1.3, caddm 0.9); box: margin factor
    context_scale: float = 0.0  # > 0 adds a wider context crop (this × the face crop's extent)


@dataclass(frozen=True)
class OutputConfig:
    """Sample encoding and shard sizing."""

    image_format: str = "jpg"  # jpg | png | webp
    quality: int = 95
    videos_per_shard: int = 48  # ~1.5k samples at 32 frames
    maps: tuple[str, ...] = ()  # region maps computed inline during extract (e.g. landmarks)


@dataclass(frozen=True)
class CamConfig:
    """PRLE's CAM maps when `output.maps` names `cam`: a recipe cannot ship trained detectors, so the zoo is
    given on the command line (`--set cam.zoo=[a.pt,b.pt]`); without one, extract prints the next commands."""

    zoo: tuple[str, ...] = ()  # checkpoints from `dfprep train`, one per zoo member
    layers: tuple[str, ...] = ()  # Grad-CAM modules; empty: each architecture's PRLE-style layers
    target: str = "predicted"  # predicted (PRLE's released code) | label | fake
    fusion: str = "mean"  # mean (PRLE) | max
    threshold: float = 0.3  # PRLE: values <= 0.3 of the min-max normalised fused map are zeroed
    released_halving: bool = False  # halve each detector's map first, as PRLE's saved maps are (0.3 acts as 0.6)
    name: str = "cam"  # folder under OUT/maps/


@dataclass(frozen=True)
class RayConfig:
    """Where and how widely to run."""

    workers: int | None = None  # None = all CPUs; 0 = in-process
    address: str | None = None  # None = local; "auto" joins a running cluster
    in_flight_per_worker: int = 1  # units queued per actor; 1 keeps the tail balanced (ray.wait returns at once)
    decode_threads: int = 1  # decoder threads inside each Ray worker (one CPU each); in-process uses all cores
    task_retries: int = 3
    actor_restarts: int = 3


@dataclass(frozen=True)
class PipelineConfig:
    """The whole resolved configuration; its hash is stamped into outputs."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    cam: CamConfig = field(default_factory=CamConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), JSON-serialisable."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def output_hash(self) -> str:
        """sha256 over everything that changes the produced samples (not where/how wide it runs, nor the maps)."""
        content = self.to_dict()
        content.pop("ray")
        content.pop("cam")  # map settings live in the map folder's own manifest
        content["dataset"].pop("root", None)
        blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# Keys a recipe may use besides the stage sections.
_META_KEYS = {"extends", "description"}


def _expected_name(tp: Any) -> str:
    """Human name of a type annotation for error messages."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_expected_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"list of {_expected_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it in the dataclass's form (lists → tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_expected_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
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
    raise ConfigError(f"{where}: expected {_expected_name(tp)}, got {type(value).__name__} {value!r}")


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


def read_yaml(path: Path) -> dict[str, Any]:
    """Load a pipeline YAML file safely (no python tags); an empty file is {}."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({one_line(exc)})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
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


def recipe_path(name: str) -> Path:
    """Resolve a recipe name (pipelines/NAME.yaml) or an explicit .yaml path."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = paths.recipes_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown pipeline '{name}' (available: {', '.join(available_recipes())})")
    return path


def available_recipes() -> list[str]:
    """Names of the recipes in pipelines/."""
    return sorted(p.stem for p in paths.recipes_dir().glob("*.yaml"))


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
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def load_config(
    recipe: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    defaults: Path | None = None,
) -> PipelineConfig:
    """Resolve defaults ← recipe chain ← overrides (dotted keys, e.g. sampling.frames) into a config."""
    defaults = defaults or paths.defaults_file()
    base = read_yaml(defaults) if defaults.is_file() else {}
    _check_layer(base, str(defaults))
    merged: dict[str, Any] = {k: v for k, v in base.items() if k not in _META_KEYS}
    origin = {f"{s}.{k}": str(defaults) for s, v in merged.items() for k in v}
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
    validate(config)
    return config


_CHOICES = {
    ("sampling", "mode"): ("uniform", "stride", "fps", "all", "keyframes"),
    ("detection", "detector"): ("hog", "cnn"),
    ("detection", "select"): ("largest", "all", "centre"),
    ("alignment", "preset"): ("deepfakebench", "caddm", "box"),
    ("output", "image_format"): ("jpg", "png", "webp"),
    ("dataset", "dfd_split"): ("train", "val", "test"),
    ("dataset", "default_split"): ("train", "val", "test", "unassigned"),
    ("cam", "target"): ("predicted", "label", "fake"),
    ("cam", "fusion"): ("mean", "max"),
}


def validate(config: PipelineConfig) -> None:
    """Value checks a type cannot express (choices, ranges)."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise ConfigError(f"{section}.{key}: expected one of {', '.join(choices)}, got {value!r}")
    positive = [("sampling", "frames"), ("sampling", "stride"), ("alignment", "size"), ("output", "videos_per_shard")]
    for section, key in positive:
        if getattr(getattr(config, section), key) <= 0:
            raise ConfigError(f"{section}.{key}: must be > 0")
    if not 0 <= config.dataset.val_fraction < 1:
        raise ConfigError("dataset.val_fraction: must be in [0, 1)")
    if not 1 <= config.output.quality <= 100:
        raise ConfigError("output.quality: must be in [1, 100]")
    if config.sampling.fps <= 0:
        raise ConfigError("sampling.fps: must be > 0")
    for name in config.output.maps:
        if name not in ("landmarks", "cam"):
            raise ConfigError(f"output.maps: unknown inline map method {name!r} (expected landmarks or cam)")
    if not 0 <= config.cam.threshold < 1:
        raise ConfigError("cam.threshold: must be in [0, 1)")
