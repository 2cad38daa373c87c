"""`dfprep maps`: companion shards of primary-region maps — one per face shard, same keys, same order.

Each committed face shard `OUT/<split>-NNNNNN.tar` gets `OUT/maps/<name>/<split>-NNNNNN.tar` holding one
`<key>.prmap.png` per face, committed like extract's shards (tar.tmp → tar → parquet → `_stats.json`).
`OUT/maps/<name>/manifest.json` records how the maps were made; a rerun with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import cv2
import numpy as np

from dfprep import __version__
from dfprep.config.schema import FUSIONS, MAP_METHODS, TARGETS, CamRecipe
from dfprep.errors import DfprepError
from dfprep.io.integrity import damaged_units, uncommit
from dfprep.io.layout import (DATASET_JSON, IMAGE_TYPES, LANDMARKS_MEMBER, MANIFEST, MAP_MEMBER, MAP_SET_NAME,
                              PLAN_META, STATS_SUFFIX, TEMP_SUFFIX, unit_files)
from dfprep.io.ownership import check_claimable
from dfprep.io.payloads import PayloadError, decode_image, load_json, load_landmarks
from dfprep.io.regionmaps import ZooCheckpoint, apply_threshold, encode_map_png
from dfprep.io.shards import Sample, ShardWriter, committed_units, read_samples, remove_stale_staging, remove_uncommitted
from dfprep.io.storage import Storage
from dfprep.vision.regions import DEFAULT_BLUR_SIGMA, DEFAULT_WEIGHTS, check_weights, landmark_prior_map

DEFAULT_THRESHOLDS = {"landmarks": 0.0, "cam": 0.3}

ReportFn = Callable[[str, int], None]  # (unit name, samples mapped so far in that unit)


@dataclass(frozen=True)
class MapSettings:
    """How maps are made: the method and its options (what must not change between runs of one --name)."""

    method: str = "landmarks"
    name: str = ""  # folder under OUT/maps/; default: the method
    weights: tuple[tuple[str, float], ...] = tuple(DEFAULT_WEIGHTS.items())
    blur_sigma: float = DEFAULT_BLUR_SIGMA
    zoo: tuple[str, ...] = ()  # checkpoint paths (cam)
    fusion: str = "mean"
    threshold: float | None = None  # default: 0.3 for cam (PRLE), 0 for landmarks (keep the soft edges)
    layers: tuple[str, ...] = ()  # Grad-CAM modules; default: the architecture's PRLE-style layers
    target: str = "predicted"  # predicted (PRLE's code) | label (each crop's own class) | fake (the fake logit)
    released_halving: bool = False  # halve each detector's map before fusion, as PRLE's released maps are
    batch_size: int = 32
    device: str = "auto"
    models: tuple[str, ...] = ()  # model factories the user trusts (--model), for zoo checkpoints that name one

    def resolved(self) -> "MapSettings":
        """Defaults filled in and every option checked, before any file is touched."""
        if self.method not in MAP_METHODS:
            raise DfprepError(f"unknown map method {self.method!r}: use one of {list(MAP_METHODS)}")
        name = self.name or self.method
        threshold = DEFAULT_THRESHOLDS[self.method] if self.threshold is None else float(self.threshold)
        problems = [
            (not MAP_SET_NAME.match(name), f"--name {name!r}: use letters, digits, '_' or '-'"),
            (self.method == "cam" and not self.zoo, "--method cam needs checkpoints: --zoo A.pt [B.pt …]"),
            (self.method == "landmarks" and bool(self.zoo), "--zoo is only used by --method cam"),
            (self.method == "landmarks" and self.released_halving, "--released-halving is only used by --method cam"),
            (self.method == "landmarks" and bool(self.layers), "--layer is only used by --method cam"),
            (self.fusion not in FUSIONS, f"--fusion {self.fusion!r}: use one of {list(FUSIONS)}"),
            (self.target not in TARGETS, f"--target {self.target!r}: use one of {list(TARGETS)}"),
            (not 0.0 <= threshold < 1.0, f"--threshold {threshold}: expected 0 <= threshold < 1"),
            (self.batch_size < 1, f"--batch-size {self.batch_size}: expected >= 1"),
            (self.blur_sigma < 0, f"--blur-sigma {self.blur_sigma}: expected >= 0"),
        ]
        for failed, reason in problems:
            if failed:
                raise DfprepError(reason)
        weights = tuple(sorted(check_weights(dict(self.weights)).items()))
        zoo = tuple(str(Path(path).resolve()) for path in self.zoo)  # actors may run in another directory
        return replace(self, name=name, threshold=threshold, weights=weights, zoo=zoo, layers=tuple(self.layers))

    def identity(self, checkpoints: list[ZooCheckpoint], layers: list[tuple[str, ...]],
                 source_hash: str | None) -> dict[str, Any]:
        """Everything that changes the maps (and nothing about how widely they run): compared on every rerun."""
        cam = self.method == "cam"
        return {
            "method": self.method, "threshold": self.threshold, "source_config_hash": source_hash,
            "weights": None if cam else dict(self.weights), "blur_sigma": None if cam else self.blur_sigma,
            "zoo": [{"file": c.file, "sha256": c.sha256, "layers": list(names)}
                    for c, names in zip(checkpoints, layers)],
            "fusion": self.fusion if cam else None, "target": self.target if cam else None,
            "released_halving": self.released_halving if cam else None, "bits": 16 if cam else None,
        }

    def cam_recipe(self) -> CamRecipe:
        """The CAM options as a CAM backend's zoo takes them."""
        return CamRecipe(self.layers, self.target, self.fusion, float(self.threshold or 0.0), self.released_halving)


def inline_settings(method: str, cam: Any) -> MapSettings:
    """The settings extract's `output.maps` uses: landmark defaults, or the config's `cam` section."""
    if method != "cam":
        return MapSettings(method=method)
    return MapSettings(method="cam", name=cam.name, zoo=tuple(cam.zoo), layers=tuple(cam.layers), target=cam.target,
                       fusion=cam.fusion, threshold=cam.threshold, released_halving=cam.released_halving)


def cam_maps_command(output: str, cam: Any, zoo: str) -> str:
    """`dfprep maps … --method cam` with every option the config sets away from the defaults."""
    default = MapSettings(method="cam")
    flags = [f"--layer {layer}" for layer in cam.layers]
    flags += [f"--{option} {value}" for option, value, usual in (
        ("name", cam.name, "cam"), ("target", cam.target, default.target), ("fusion", cam.fusion, default.fusion),
        ("threshold", cam.threshold, DEFAULT_THRESHOLDS["cam"])) if value != usual]
    flags += ["--released-halving"] if cam.released_halving else []
    return " ".join([f"dfprep maps {output} --method cam --zoo {zoo}", *flags])


def cam_next_steps(output: str, cam: Any) -> list[str]:
    """What to run when a `prle` extract has no zoo yet: PRLE's maps come from detectors trained on these faces."""
    members = ["runs/zoo-resnet18/model.pt", "runs/zoo-efficientnet_small/model.pt"]
    zoo, name = " ".join(members), cam.name
    return [f"cam maps: not made yet: PRLE's maps are Grad-CAMs of a zoo of detectors trained on these faces, and "
            f"cam.zoo is empty. Next:",
            f"  dfprep train {output} -o runs/zoo-resnet18 --model resnet18 --seed 1",
            f"  dfprep train {output} -o runs/zoo-efficientnet_small --model efficientnet_small --seed 2",
            f"  {cam_maps_command(output, cam, zoo)}",
            f"  dfprep train {output} -o runs/prle --region-erasing --maps {name}",
            f"  dfprep evaluate runs/prle/model.pt {output}",
            f"  (or, instead of dfprep maps: rerun this extract with --set 'cam.zoo=[{','.join(members)}]')"]


@dataclass(frozen=True)
class MapUnit:
    """One committed face shard and how many faces it holds: the unit of map work."""

    name: str
    samples: int


@dataclass
class MapReport:
    """What a maps run did: the numbers its summary shows."""

    output: str
    name: str
    method: str
    units_total: int
    units_skipped: int
    maps_written: int = 0
    maps_total: int = 0
    seconds: float = 0.0
    removed: list[str] = field(default_factory=list)
    note: str = ""
    nodes_lost: list[str] = field(default_factory=list)  # cluster nodes that died mid-run (their units redone)


# ---------------------------------------------------------------- reading face shards


@dataclass
class FaceSample:
    """The members of one face a map needs (image, landmarks, metadata), undecoded."""

    key: str
    members: dict[str, bytes]

    shard: str = ""

    def image(self) -> np.ndarray:
        """The aligned crop as RGB uint8 (its size checked from the header before decoding)."""
        payload = next((self.members[t] for t in IMAGE_TYPES if t in self.members), None)
        if payload is None:
            raise DfprepError(f"{self.shard}: sample {self.key}: no face image ({'/'.join(IMAGE_TYPES)})")
        try:
            image = decode_image(payload, cv2.IMREAD_COLOR)
        except PayloadError as exc:
            raise DfprepError(f"{self.shard}: sample {self.key}: {exc}") from None
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def landmarks(self) -> np.ndarray:
        """`<key>.ldm.npy` as float32 (N, 2), read without pickles and bounded."""
        if LANDMARKS_MEMBER not in self.members:
            raise DfprepError(f"{self.shard}: sample {self.key}: no {LANDMARKS_MEMBER} landmarks member")
        try:
            return load_landmarks(self.members[LANDMARKS_MEMBER])
        except PayloadError as exc:
            raise DfprepError(f"{self.shard}: sample {self.key}: {exc}") from None

    def label(self) -> int:
        """0 = real, 1 = fake, from `<key>.json`."""
        meta = load_json(self.members["json"]) if "json" in self.members else None
        label = meta.get("label") if isinstance(meta, dict) else None
        if label not in (0, 1) or isinstance(label, bool):
            raise DfprepError(f"{self.shard}: sample {self.key}: no 0/1 label in its json (needed for --target label)")
        return int(label)


def read_face_samples(faces: Storage, unit: str) -> Iterator[FaceSample]:
    """A face shard's samples in tar order, streamed (members of one key are contiguous), crc32s checked."""
    wanted = frozenset(IMAGE_TYPES) | {LANDMARKS_MEMBER, "json"}
    for key, members in read_samples(faces, f"{unit}.tar", wanted):
        yield FaceSample(key, members, f"{unit}.tar")


def batched(samples: Iterable[FaceSample], size: int) -> Iterator[list[FaceSample]]:
    """Consecutive groups of at most `size` samples, order kept."""
    iterator = iter(samples)
    while batch := list(islice(iterator, size)):
        yield batch


# ---------------------------------------------------------------- mappers: a batch of faces → maps


class Mapper(Protocol):
    """Turns a batch of faces into one map each; `bits` is the PNG depth its maps are stored with."""

    bits: int
    batch_size: int

    def maps(self, batch: list[FaceSample]) -> list[np.ndarray]:
        """One (H, W) float32 map in [0, 1] per face, in order."""


class CamModel(Protocol):
    """A loaded zoo: RGB uint8 crops (B, H, W, 3), optional 0/1 labels → fused, thresholded maps (B, H, W)."""

    def maps(self, crops: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Maps for crops of one size."""


class CamBackend(Protocol):
    """What CAM maps need from a Grad-CAM implementation (dfprep.torch.cam.GradCamBackend, given by the runner):
    this module never imports torch."""

    def layers(self, checkpoint: ZooCheckpoint, layers: Sequence[str], trusted: Sequence[str]) -> tuple[str, ...]:
        """Load one checkpoint (a bad file fails here) and name the modules Grad-CAM reads."""

    def zoo(self, checkpoints: Sequence[ZooCheckpoint], recipe: CamRecipe, device: str,
            trusted: Sequence[str]) -> CamModel:
        """Load every checkpoint onto the device as one zoo."""


class LandmarkMapper:
    """The model-free prior: hulls of the stored landmarks, no detection, no model."""

    bits = 8  # a smooth prior: 256 levels are plenty

    def __init__(self, settings: MapSettings):
        self.weights, self.sigma = dict(settings.weights), settings.blur_sigma
        self.threshold, self.batch_size = float(settings.threshold or 0.0), settings.batch_size

    def maps(self, batch: list[FaceSample]) -> list[np.ndarray]:
        """One map per face; the crop size is read once per batch (one output, one alignment size)."""
        size = batch[0].image().shape[:2]
        maps = [landmark_prior_map(sample.landmarks(), size, self.weights, self.sigma) for sample in batch]
        return [apply_threshold(m, self.threshold) for m in maps] if self.threshold > 0 else maps


class CamMapper:
    """PRLE's static localization: Grad-CAM of every zoo detector, fused and thresholded, batched."""

    bits = 16  # erasing ranks the values (PRLE keeps float .npy maps): 8 bits would tie many of them

    def __init__(self, settings: MapSettings, checkpoints: list[ZooCheckpoint], backend: CamBackend):
        self.zoo = backend.zoo(checkpoints, settings.cam_recipe(), settings.device, settings.models)
        self.target, self.batch_size = settings.target, settings.batch_size

    def maps(self, batch: list[FaceSample]) -> list[np.ndarray]:
        """Maps for a batch, run through the zoo in runs of equally sized crops."""
        crops = [sample.image() for sample in batch]
        labels = np.array([sample.label() for sample in batch]) if self.target == "label" else None
        maps: list[np.ndarray] = []
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape == crops[start].shape:
                end += 1
            maps += list(self.zoo.maps(np.stack(crops[start:end]), None if labels is None else labels[start:end]))
            start = end
        return maps


def make_mapper(settings: MapSettings, checkpoints: list[ZooCheckpoint], cam: CamBackend | None) -> Mapper:
    """The mapper for the settings' method (CAM maps need the runner's CAM backend)."""
    if settings.method != "cam":
        return LandmarkMapper(settings)
    if cam is None:
        raise DfprepError("--method cam needs a Grad-CAM backend (dfprep.torch.cam): install dfprep[torch]")
    return CamMapper(settings, checkpoints, cam)


def zoo_layers(settings: MapSettings, checkpoints: list[ZooCheckpoint], cam: CamBackend) -> list[tuple[str, ...]]:
    """Load every zoo checkpoint once on the driver: a bad one fails here, before any work."""
    return [cam.layers(checkpoint, settings.layers, settings.models) for checkpoint in checkpoints]


# ---------------------------------------------------------------- one unit: read, map, commit


def map_unit(unit: MapUnit, faces: Storage, maps: Storage, mapper: Mapper,
             report: ReportFn | None = None, settings_hash: str = "") -> dict[str, Any]:
    """Map every face of one shard into its companion shard and commit it, stamped with the settings hash."""
    if unit.samples and not faces.exists(f"{unit.name}.tar"):
        raise DfprepError(f"{unit.name}.tar is missing although its face shard is committed: delete "
                          f"{unit.name}{STATS_SUFFIX} and re-run extract")
    started = time.monotonic()
    writer = ShardWriter(maps, unit.name)
    size: list[int] | None = None
    try:
        samples = read_face_samples(faces, unit.name) if unit.samples else iter(())
        for batch in batched(samples, mapper.batch_size):
            for sample, region_map in zip(batch, mapper.maps(batch)):
                members = {MAP_MEMBER: encode_map_png(region_map, mapper.bits),
                           "json": json.dumps({"key": sample.key}).encode()}
                writer.add(Sample(sample.key, members, map_row(region_map)))  # the json records the map's crc32
                size = size or list(region_map.shape)
            if report is not None:
                report(unit.name, len(writer.rows))
        if len(writer.rows) != unit.samples:
            raise DfprepError(f"{unit.name}.tar holds {len(writer.rows)} faces but its commit marker says "
                              f"{unit.samples}: the face shard changed or is damaged")
        return writer.commit({"unit": unit.name, "size": size, "seconds": round(time.monotonic() - started, 3),
                              "settings_hash": settings_hash})
    except BaseException:
        writer.discard()
        raise


def map_row(region_map: np.ndarray) -> dict[str, float]:
    """The per-shard parquet row: how much of the crop the map covers and how strongly."""
    return {"coverage": round(float(np.count_nonzero(region_map)) / region_map.size, 5),
            "peak": round(float(region_map.max()), 5)}


# ---------------------------------------------------------------- the run: plan, refuse, resume, finalize


def face_units(faces: Storage) -> list[MapUnit]:
    """The committed face shards of OUT, in name order (uncommitted ones are not mapped)."""
    committed = committed_units(faces)
    if not committed:
        raise DfprepError(f"no committed face shards in {faces.root}: run `dfprep extract … -o {faces.root}` first")
    damaged = damaged_units(faces, committed)
    if damaged:
        first = next(iter(damaged.items()))
        raise DfprepError(f"{len(damaged)} face shard(s) of {faces.root} are damaged (first: {first[0]}: {first[1]}); "
                          "rerun the extract command to redo them, then maps")
    return [MapUnit(name, int(stats.get("samples", 0))) for name, stats in sorted(committed.items())]


def source_summary(faces: Storage) -> dict[str, Any]:
    """The face output's config hash, crop size and completeness, from its dataset.json (else its plan)."""
    dataset = faces.read_marker(DATASET_JSON) or faces.read_marker(PLAN_META)  # the plan has the same hash
    if dataset is None:
        return {}
    size = (dataset.get("config") or {}).get("alignment", {}).get("size")
    return {"config_hash": dataset.get("config_hash"), "size": [size, size] if size else None,
            "complete": dataset.get("complete")}


def settings_hash(identity: dict[str, Any]) -> str:
    """sha256 of the map identity, stamped into the manifest."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_manifest(maps: Storage, identity: dict[str, Any], name: str) -> None:
    """Refuse to add maps made differently to a folder that already holds some (one line, with the way out)."""
    previous = (maps.read_marker(MANIFEST) or {}).get("identity")
    if previous is None:
        return  # no manifest (or an unreadable one): the commit markers' settings hash still guards the shards
    changed = sorted(k for k in identity if previous.get(k) != identity[k])
    if changed:
        raise DfprepError(f"{maps.root} holds maps made with different settings ({', '.join(changed)} changed); "
                          f"rerun with the same settings, --overwrite to redo them, or another --name than {name!r}")


def clean_maps(maps: Storage, units: list[MapUnit]) -> list[str]:
    """--overwrite: delete this map folder's own files, by the names its manifest and the face plan give."""
    listed = (maps.read_marker(MANIFEST) or {}).get("shards") or []
    names = {u.name for u in units} | {name for name in listed if isinstance(name, str) and MAP_SET_NAME.match(name)}
    present = set(maps.listdir())
    removed = [n for n in (MANIFEST, f"{MANIFEST}{TEMP_SUFFIX}") if n in present]
    removed += [n for unit in sorted(names) for n in unit_files(unit) if n in present]
    for name in removed:
        maps.delete(name)
    return removed


def valid_map_commits(maps: Storage, settings_hash: str) -> dict[str, dict[str, Any]]:
    """Map commit markers stamped with these settings: other settings' are not commits here (an unstamped marker
    predates stamps; the manifest check already refused other settings for it)."""
    return {unit: stats for unit, stats in committed_units(maps).items()
            if stats.get("settings_hash", settings_hash) == settings_hash}


def remove_stale(maps: Storage, units: list[MapUnit], committed: dict[str, dict[str, Any]]) -> list[str]:
    """Committed map shards whose face shard is gone or holds another number of faces, or that are damaged, are redone."""
    expected = {u.name: u.samples for u in units}
    removed = []
    damaged = damaged_units(maps, committed)
    for name, stats in committed.items():
        if expected.get(name) != stats.get("samples") or name in damaged:
            removed += uncommit(maps, name)
    return removed


def prepare_maps(maps: Storage, manifest: dict[str, Any], units: list[MapUnit], overwrite: bool) -> list[str]:
    """Refuse or clean, persist the manifest before any shard, then drop stale shards and leftovers."""
    check_claimable(maps, MANIFEST, what="maps")
    removed = clean_maps(maps, units) if overwrite else []
    maps.makedirs()
    check_manifest(maps, manifest["identity"], manifest["name"])
    maps.write_json(MANIFEST, {**manifest, "complete": False})
    committed = valid_map_commits(maps, manifest["settings_hash"])
    removed += remove_stale(maps, units, committed)
    committed = valid_map_commits(maps, manifest["settings_hash"])
    return removed + remove_uncommitted(maps, [u.name for u in units], set(committed))


def manifest_base(settings: MapSettings, checkpoints: list[ZooCheckpoint], layers: list[tuple[str, ...]],
                  source: dict[str, Any]) -> dict[str, Any]:
    """The manifest's fixed part: identity (compared on reruns) plus the fields a reader looks for."""
    identity = settings.identity(checkpoints, layers, source.get("config_hash"))
    return {"name": settings.name, "identity": identity, "settings_hash": settings_hash(identity),
            "size": source.get("size"), "dfprep_version": __version__, "batch_size": settings.batch_size,
            **{k: identity[k] for k in ("method", "zoo", "fusion", "threshold", "weights", "blur_sigma", "target",
                                        "released_halving", "bits")}}


def finalize_maps(maps: Storage, manifest: dict[str, Any], units: list[MapUnit]) -> dict[str, dict[str, Any]]:
    """Rewrite the manifest from the committed shards (the single source of truth)."""
    committed = valid_map_commits(maps, manifest["settings_hash"])
    sizes = [committed[u.name]["size"] for u in units if committed.get(u.name, {}).get("size")]
    maps.write_json(MANIFEST, {**manifest, "size": manifest["size"] or (sizes[0] if sizes else None),
                               "shards": [u.name for u in units if u.name in committed],
                               "maps": sum(committed[u.name]["samples"] for u in units if u.name in committed),
                               "complete": all(u.name in committed for u in units)})
    return committed


# ---------------------------------------------------------------- the worker (run by dfprep.runner.maps)


class MapWorker:
    """Ray actor body: builds its mapper (models loaded once) and maps whole units.

    Constructor arguments are plain values (checkpoint paths and their sha256, never the weights through
    the object store), so Ray can always restart an actor; on a cluster the zoo must sit on a shared path.
    """

    def __init__(self, settings: MapSettings, zoo_sha256: list[str], cam: CamBackend | None):
        cv2.setNumThreads(1)
        remove_stale_staging()  # a restarted actor (or a killed run) may have left its staging folder
        checkpoints = [ZooCheckpoint.read(path, digest) for path, digest in zip(settings.zoo, zoo_sha256)]
        self.mapper = make_mapper(settings, checkpoints, cam)

    def run_unit(self, unit: MapUnit, faces: Storage, maps: Storage, settings_hash: str, queue: Any) -> dict[str, Any]:
        """Map and commit one unit, announcing (unit, mapped so far) after each batch."""
        return map_unit(unit, faces, maps, self.mapper, lambda name, done: queue.put_nowait.remote((name, done)),
                        settings_hash)
