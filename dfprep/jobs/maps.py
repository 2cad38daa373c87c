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
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import cv2
import numpy as np

from dfprep import __version__
from dfprep.config.schema import FUSIONS, MAP_METHODS, TARGETS, CamRecipe, RayConfig
from dfprep.errors import DfprepError
from dfprep.io.integrity import MARKER_CHECK_KEYS, damaged_units
from dfprep.io.layout import (DATASET_JSON, LANDMARKS_MEMBER, MANIFEST, MAP_INDEX_SCHEMA, MAP_MEMBER,
                              MAP_SET_NAME, MAPS_FOLDER, PLAN_META, READ_IMAGE_TYPES, STATS_SUFFIX, TEMP_SUFFIX,
                              unit_files)
from dfprep.io.ownership import check_claimable
from dfprep.io.payloads import PayloadError, decode_image, load_json, load_landmarks
from dfprep.io.regionmaps import ZooCheckpoint, apply_threshold, encode_map_png
from dfprep.io.shards import Sample, ShardWriter, committed_units, read_samples
from dfprep.io.storage import Storage
from dfprep.jobs.contract import Announce, Bar, ItemGuard, Needs, Outcome, Plan, Stats, WorkerFactory, local_needs
from dfprep.vision.regions import DEFAULT_BLUR_SIGMA, DEFAULT_WEIGHTS, check_weights, landmark_prior_map

DEFAULT_THRESHOLDS = {"landmarks": 0.0, "cam": 0.3}


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
        payload = next((self.members[t] for t in READ_IMAGE_TYPES if t in self.members), None)
        if payload is None:
            raise DfprepError(f"{self.shard}: sample {self.key}: no face image ({'/'.join(READ_IMAGE_TYPES)})")
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
    wanted = frozenset(READ_IMAGE_TYPES) | {LANDMARKS_MEMBER, "json"}
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


class MapUnitWorker:
    """Maps every face of a shard into its companion shard and commits it, stamped with the settings hash.

    Inside a Ray actor it is built from plain values (`from_digests`: checkpoint paths and their sha256, never
    the weights through the object store), so Ray can always restart the actor; on a cluster the zoo must sit
    on a shared path.
    """

    def __init__(self, mapper: Mapper, faces: Storage, maps: Storage, settings_hash: str):
        self.mapper, self.faces, self.maps, self.settings_hash = mapper, faces, maps, settings_hash

    @classmethod
    def from_checkpoints(cls, settings: MapSettings, checkpoints: list[ZooCheckpoint], cam: CamBackend | None,
                         faces: Storage, maps: Storage, settings_hash: str) -> "MapUnitWorker":
        """A worker over checkpoints already read (in-process)."""
        return cls(make_mapper(settings, checkpoints, cam), faces, maps, settings_hash)

    @classmethod
    def from_digests(cls, settings: MapSettings, zoo_sha256: list[str], cam: CamBackend | None, faces: Storage,
                     maps: Storage, settings_hash: str) -> "MapUnitWorker":
        """A worker that reads the zoo itself and checks each checkpoint against the driver's sha256 (Ray)."""
        checkpoints = [ZooCheckpoint.read(path, digest) for path, digest in zip(settings.zoo, zoo_sha256)]
        return cls.from_checkpoints(settings, checkpoints, cam, faces, maps, settings_hash)

    def run_unit(self, unit: MapUnit, guard: ItemGuard, announce: Announce) -> Stats:
        """Read, map and write the unit's faces in batches, then commit (the staging is discarded on any error)."""
        if unit.samples and not self.faces.exists(f"{unit.name}.tar"):
            raise DfprepError(f"{unit.name}.tar is missing although its face shard is committed: delete "
                              f"{unit.name}{STATS_SUFFIX} and re-run extract")
        started = time.monotonic()
        writer = ShardWriter(self.maps, unit.name)
        try:
            size = self._write_maps(unit, writer, announce)
            if len(writer.rows) != unit.samples:
                raise DfprepError(f"{unit.name}.tar holds {len(writer.rows)} faces but its commit marker says "
                                  f"{unit.samples}: the face shard changed or is damaged")
            return writer.commit({"unit": unit.name, "size": size, "seconds": round(time.monotonic() - started, 3),
                                  "settings_hash": self.settings_hash, **guard.placement}, MAP_INDEX_SCHEMA)
        except BaseException:
            writer.discard()
            raise

    def _write_maps(self, unit: MapUnit, writer: ShardWriter, announce: Announce) -> list[int] | None:
        """One map per face, in the face shard's order; returns the maps' size."""
        size: list[int] | None = None
        samples = read_face_samples(self.faces, unit.name) if unit.samples else iter(())
        for batch in batched(samples, self.mapper.batch_size):
            for sample, region_map in zip(batch, self.mapper.maps(batch)):
                members = {MAP_MEMBER: encode_map_png(region_map, self.mapper.bits),
                           "json": json.dumps({"key": sample.key}).encode()}
                writer.add(Sample(sample.key, members, map_row(region_map)))  # the json records the map's crc32
                size = size or list(region_map.shape)
            announce(unit.name, len(writer.rows), len(writer.rows))
        return size


def map_row(region_map: np.ndarray) -> dict[str, float]:
    """The per-shard parquet row: how much of the crop the map covers and how strongly."""
    return {"coverage": round(float(np.count_nonzero(region_map)) / region_map.size, 5),
            "peak": round(float(region_map.max()), 5)}


# ---------------------------------------------------------------- the job: plan, refuse, resume, finalize


def face_units(faces: Storage) -> list[MapUnit]:
    """The committed face shards of OUT, in name order (uncommitted ones are not mapped)."""
    committed = committed_units(faces, keep=MARKER_CHECK_KEYS)  # samples, and what the damage check reads
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


def manifest_base(settings: MapSettings, checkpoints: list[ZooCheckpoint], layers: list[tuple[str, ...]],
                  source: dict[str, Any]) -> dict[str, Any]:
    """The manifest's fixed part: identity (compared on reruns) plus the fields a reader looks for."""
    identity = settings.identity(checkpoints, layers, source.get("config_hash"))
    return {"name": settings.name, "identity": identity, "settings_hash": settings_hash(identity),
            "size": source.get("size"), "dfprep_version": __version__, "batch_size": settings.batch_size,
            **{k: identity[k] for k in ("method", "zoo", "fusion", "threshold", "weights", "blur_sigma", "target",
                                        "released_halving", "bits")}}


@dataclass(frozen=True)
class MapRun:
    """One `dfprep maps` run, the API of `maps_run`: which maps, the Ray settings it runs under, and how it treats
    the maps already there (extract's inline maps pass the pipeline's own `ray` section)."""

    settings: MapSettings = field(default_factory=MapSettings)
    ray: RayConfig = field(default_factory=RayConfig)
    overwrite: bool = False  # delete this map set's earlier maps and start over
    quiet: bool = False  # no progress bar


class MapJob:
    """`dfprep maps` as a sharded job: committed face shards → companion map shards, then the manifest."""

    kind = "maps"
    bar = Bar("maps", "map", "maps_per_s", faces=False)
    guarded = False
    threads = False  # a map worker may hold a torch model: one per process
    temporaries = (MANIFEST,)
    marker_keys = frozenset({"settings_hash", "samples", "size"})

    def __init__(self, faces: Storage, run: MapRun, cam: CamBackend | None):
        self.settings, self.ray, self.overwrite, self.cam = run.settings.resolved(), run.ray, run.overwrite, cam
        self.output = faces
        self.shards = Storage(faces.path(f"{MAPS_FOLDER}/{self.settings.name}"), faces.fs)
        self.units: list[MapUnit] = []
        self.checkpoints: list[ZooCheckpoint] = []
        self.manifest: dict[str, Any] = {}
        self.source: dict[str, Any] = {}

    def check(self) -> None:
        """Nothing to refuse before the lock: the face shards are read under it."""

    def claim(self) -> list[str]:
        """Read the face shards and the zoo, refuse other settings' maps, persist the manifest before any shard."""
        self.units = face_units(self.output)
        self.checkpoints = [ZooCheckpoint.read(path) for path in self.settings.zoo]
        layers = zoo_layers(self.settings, self.checkpoints, self.cam) if self.cam and self.checkpoints else []
        self.source = source_summary(self.output)
        self.manifest = manifest_base(self.settings, self.checkpoints, layers, self.source)
        check_claimable(self.shards, MANIFEST, what="maps")
        removed = clean_maps(self.shards, self.units) if self.overwrite else []
        self.shards.makedirs()
        check_manifest(self.shards, self.manifest["identity"], self.manifest["name"])
        self.shards.write_json(MANIFEST, {**self.manifest, "complete": False})
        return removed

    def expected_items(self) -> int | None:
        """None: maps run where the user's ray settings say (Grad-CAM wants the GPUs a Ray pool finds)."""
        return None

    def plan(self, workers: int) -> Plan[MapUnit]:
        """One unit per committed face shard; a note when the face output is not finished."""
        complete = self.source.get("complete", True)
        return Plan(self.units, "" if complete else "the face output is incomplete: rerun maps after extract finishes")

    def is_committed(self, stats: Stats) -> bool:
        """A marker stamped with these settings (an unstamped one predates stamps; the manifest check guards it)."""
        return stats.get("settings_hash", self.manifest["settings_hash"]) == self.manifest["settings_hash"]

    def stale(self, unit: str, stats: Stats, units: dict[str, MapUnit]) -> str | None:
        """A map shard whose face shard is gone or now holds another number of faces is redone."""
        face = units.get(unit)
        if face is None or face.samples != stats.get("samples"):
            return "its face shard changed"
        return None

    def size(self, unit: MapUnit) -> int:
        """Faces in the unit."""
        return unit.samples

    def cost(self, unit: MapUnit) -> float:
        """Faces in the unit: every map costs about the same."""
        return float(unit.samples)

    def load(self, unit: MapUnit) -> MapUnit:
        """A map unit names its face shard: its worker reads the faces itself."""
        return unit

    def worker(self, in_process: bool, threads: int = 1) -> WorkerFactory:
        """In-process over the checkpoints read here; a Ray actor re-reads them and checks their sha256."""
        common = (self.cam, self.output, self.shards, self.manifest["settings_hash"])
        if in_process:
            return partial(MapUnitWorker.from_checkpoints, self.settings, self.checkpoints, *common)
        return partial(MapUnitWorker.from_digests, self.settings, [c.sha256 for c in self.checkpoints], *common)

    def actors(self, workers: int, gpus: float) -> tuple[int, dict[str, Any] | None]:
        """CAM takes one GPU per actor when the cluster has GPUs; otherwise one CPU per worker."""
        if self.settings.method == "cam" and gpus >= 1:
            return int(gpus), {"num_cpus": 1, "num_gpus": 1}
        return max(1, workers), None

    def needs(self) -> Needs:
        """Every node reads the face shards (when local) and the zoo, and writes the map folder (when local)."""
        return local_needs([self.output.root if self.output.is_local else None, *self.settings.zoo], [self.shards])

    def finalize(self, units: list[MapUnit], committed: dict[str, Stats]) -> None:
        """Rewrite the manifest from the committed shards."""
        sizes = [committed[u.name]["size"] for u in units if committed.get(u.name, {}).get("size")]
        done = [u.name for u in units if u.name in committed]
        self.shards.write_json(MANIFEST, {**self.manifest, "size": self.manifest["size"] or (sizes[0] if sizes else None),
                                          "shards": done, "maps": sum(committed[name]["samples"] for name in done),
                                          "complete": len(done) == len(units)})

    def report(self, outcome: Outcome[MapUnit]) -> MapReport:
        """Maps written by this run and in total."""
        units, committed = outcome.plan.units, outcome.committed
        written = sum(committed[name]["samples"] for name in outcome.done if name in committed)
        total = sum(committed[u.name]["samples"] for u in units if u.name in committed)
        shown = f"{self.output.display}/{MAPS_FOLDER}/{self.settings.name}"  # with its scheme (s3://…), no query
        return MapReport(shown, self.settings.name, self.settings.method, len(units), outcome.skipped,
                         written, total, 0.0, outcome.removed, outcome.plan.note, outcome.nodes_lost)
