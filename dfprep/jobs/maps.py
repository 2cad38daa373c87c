"""`dfprep maps`: companion shards of primary-region maps — one per face shard, same keys, same order.

Each committed face shard `OUT/<split>-NNNNNN.tar` gets `OUT/maps/<name>/<split>-NNNNNN.tar` holding one
`<key>.prmap.png` per face, committed like extract's shards (tar.tmp → tar → parquet → `_stats.json`).
`OUT/maps/<name>/manifest.json` records how the maps were made; a rerun with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np

from dfprep import __version__
from dfprep.errors import DfprepError
from dfprep.io.integrity import damaged_units
from dfprep.io.lock import OutputLock
from dfprep.io.ownership import check_claimable, open_output, output_errors
from dfprep.io.payloads import PayloadError, decode_image, load_json, load_landmarks
from dfprep.vision.regions import (DEFAULT_BLUR_SIGMA, DEFAULT_WEIGHTS, FUSIONS, TARGETS, CamRecipe, ZooCheckpoint,
                            apply_threshold, check_weights, encode_map_png, landmark_prior_map)
from dfprep.io.shards import (STATS_SUFFIX, TEMP_SUFFIX, Sample, ShardWriter, Storage, committed_units, read_samples,
                           remove_stale_staging, remove_uncommitted, unit_files)

MAP_MEMBER = "prmap.png"
MANIFEST = "manifest.json"
METHODS = ("landmarks", "cam")
IMAGE_TYPES = ("jpg", "png", "webp")
DEFAULT_THRESHOLDS = {"landmarks": 0.0, "cam": 0.3}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

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
        if self.method not in METHODS:
            raise DfprepError(f"unknown map method {self.method!r}: use one of {list(METHODS)}")
        name = self.name or self.method
        threshold = DEFAULT_THRESHOLDS[self.method] if self.threshold is None else float(self.threshold)
        problems = [
            (not _NAME.match(name), f"--name {name!r}: use letters, digits, '_' or '-'"),
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
        """The CAM options as regions.CamZoo takes them."""
        return CamRecipe(self.layers, self.target, self.fusion, float(self.threshold or 0.0), self.released_halving)


def inline_settings(method: str, cam: Any) -> MapSettings:
    """The settings extract's `output.maps` uses: landmark defaults, or the config's `cam` section."""
    if method != "cam":
        return MapSettings(method=method)
    return MapSettings(method="cam", name=cam.name, zoo=tuple(cam.zoo), layers=tuple(cam.layers), target=cam.target,
                       fusion=cam.fusion, threshold=cam.threshold, released_halving=cam.released_halving)


def check_inline_maps(config: Any) -> None:
    """Before extract starts: every zoo checkpoint of inline `cam` maps reads and loads (not hours later)."""
    if "cam" in config.output.maps and config.cam.zoo:
        settings = inline_settings("cam", config.cam).resolved()
        zoo_layers(settings, [ZooCheckpoint.read(path) for path in settings.zoo])


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
        if "ldm.npy" not in self.members:
            raise DfprepError(f"{self.shard}: sample {self.key}: no ldm.npy landmarks member")
        try:
            return load_landmarks(self.members["ldm.npy"])
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
    wanted = frozenset(IMAGE_TYPES) | {"ldm.npy", "json"}
    for key, members in read_samples(faces, f"{unit}.tar", wanted):
        yield FaceSample(key, members, f"{unit}.tar")


def batched(samples: Iterable[FaceSample], size: int) -> Iterator[list[FaceSample]]:
    """Consecutive groups of at most `size` samples, order kept."""
    iterator = iter(samples)
    while batch := list(islice(iterator, size)):
        yield batch


# ---------------------------------------------------------------- mappers: a batch of faces → maps


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

    def __init__(self, settings: MapSettings, checkpoints: list[ZooCheckpoint]):
        from dfprep.vision.regions import CamZoo

        self.zoo = CamZoo(checkpoints, settings.cam_recipe(), settings.device, settings.models)
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


def make_mapper(settings: MapSettings, checkpoints: list[ZooCheckpoint]) -> LandmarkMapper | CamMapper:
    """The mapper for the settings' method."""
    return CamMapper(settings, checkpoints) if settings.method == "cam" else LandmarkMapper(settings)


# ---------------------------------------------------------------- one unit: read, map, commit


def map_unit(unit: MapUnit, faces: Storage, maps: Storage, mapper: Any,
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
    dataset = faces.read_marker("dataset.json") or faces.read_marker("plan.json")  # the plan has the same hash
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
    names = {u.name for u in units} | {name for name in listed if isinstance(name, str) and _NAME.match(name)}
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
        if expected.get(name) == stats.get("samples") and name not in damaged:
            continue
        for suffix in (STATS_SUFFIX, ".tar", ".parquet"):
            if maps.exists(f"{name}{suffix}"):
                maps.delete(f"{name}{suffix}")
                removed.append(f"{name}{suffix}")
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


def zoo_layers(settings: MapSettings, checkpoints: list[ZooCheckpoint]) -> list[tuple[str, ...]]:
    """Load every zoo checkpoint once on the driver: a bad one fails here, before any work."""
    from dfprep.vision.regions import load_detector

    return [load_detector(checkpoint, settings.layers, settings.models)[2] for checkpoint in checkpoints]


def maps_run(output: str, settings: MapSettings, *, workers: int | None = None, address: str | None = None,
             overwrite: bool = False, quiet: bool = False, filesystem: Any = None) -> MapReport:
    """The whole `dfprep maps`: check, lock the output, refuse or resume, map what is left, write the manifest."""
    started = time.monotonic()
    settings = settings.resolved()
    faces = open_output(output, filesystem)
    with output_errors(faces), OutputLock(faces, "maps"):
        report = _maps_locked(faces, settings, workers, address, overwrite, quiet)
    report.seconds = time.monotonic() - started
    return report


def _maps_locked(faces: Storage, settings: MapSettings, workers: int | None, address: str | None, overwrite: bool,
                 quiet: bool) -> MapReport:
    """The maps run proper, under the output's lock."""
    units = face_units(faces)
    checkpoints = [ZooCheckpoint.read(path) for path in settings.zoo]
    layers = zoo_layers(settings, checkpoints) if checkpoints else []
    source = source_summary(faces)
    maps = Storage(faces.path(f"maps/{settings.name}"), faces.fs)
    manifest = manifest_base(settings, checkpoints, layers, source)
    remove_stale_staging()
    removed = prepare_maps(maps, manifest, units, overwrite)
    committed = valid_map_commits(maps, manifest["settings_hash"])
    todo = [u for u in units if u.name not in committed]
    progress = MapProgress(sum(u.samples for u in todo), quiet)
    try:
        if todo and workers == 0:
            run_in_process(todo, settings, checkpoints, faces, maps, progress, manifest["settings_hash"])
        elif todo:
            run_on_ray(todo, settings, checkpoints, faces, maps, progress, workers, address, manifest["settings_hash"])
    finally:
        progress.close()
    committed = finalize_maps(maps, manifest, units)
    note = "" if source.get("complete", True) else "the face output is incomplete: rerun maps after extract finishes"
    return MapReport(maps.root, settings.name, settings.method, len(units), len(units) - len(todo),
                     sum(committed[u.name]["samples"] for u in todo if u.name in committed),
                     sum(committed[u.name]["samples"] for u in units if u.name in committed),
                     0.0, removed, note)


# ---------------------------------------------------------------- execution: in-process or Ray actors


class MapProgress:
    """A tqdm bar over faces (total and ETA) showing maps/s; a retried unit is counted once."""

    def __init__(self, total: int, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="map", disable=quiet, dynamic_ncols=True, desc="maps")
        self.done: dict[str, int] = {}
        self.started = time.monotonic()

    def __call__(self, unit: str, mapped: int) -> None:
        """`mapped` faces of `unit` are done (cumulative, so a redone unit never double-counts)."""
        gained = mapped - self.done.get(unit, 0)
        if gained > 0:
            self.done[unit] = mapped
            self.bar.update(gained)
            rate = sum(self.done.values()) / max(time.monotonic() - self.started, 1e-6)
            self.bar.set_postfix(maps_per_s=f"{rate:.1f}", refresh=False)

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()


def run_in_process(units: list[MapUnit], settings: MapSettings, checkpoints: list[ZooCheckpoint], faces: Storage,
                   maps: Storage, progress: ReportFn, settings_hash: str = "") -> None:
    """--workers 0: every unit in this process, one after another."""
    mapper = make_mapper(settings, checkpoints)
    for unit in units:
        map_unit(unit, faces, maps, mapper, progress, settings_hash)


class MapWorker:
    """Ray actor body: builds its mapper (models loaded once) and maps whole units.

    Constructor arguments are plain values (checkpoint paths and their sha256, never the weights through
    the object store), so Ray can always restart an actor; on a cluster the zoo must sit on a shared path.
    """

    def __init__(self, settings: MapSettings, zoo_sha256: list[str]):
        cv2.setNumThreads(1)
        remove_stale_staging()  # a restarted actor (or a killed run) may have left its staging folder
        checkpoints = [ZooCheckpoint.read(path, digest) for path, digest in zip(settings.zoo, zoo_sha256)]
        self.mapper = make_mapper(settings, checkpoints)

    def run_unit(self, unit: MapUnit, faces: Storage, maps: Storage, settings_hash: str, queue: Any) -> dict[str, Any]:
        """Map and commit one unit, announcing (unit, mapped so far) after each batch."""
        return map_unit(unit, faces, maps, self.mapper, lambda name, done: queue.put_nowait.remote((name, done)),
                        settings_hash)


def actor_plan(settings: MapSettings, workers: int, gpus: float) -> tuple[int, dict[str, Any]]:
    """How many actors and what each asks for: CAM takes one GPU each when the cluster has GPUs."""
    if settings.method == "cam" and gpus >= 1:
        return int(gpus), {"num_cpus": 1, "num_gpus": 1}
    return max(1, workers), {"num_cpus": 1}


def run_on_ray(units: list[MapUnit], settings: MapSettings, checkpoints: list[ZooCheckpoint], faces: Storage,
               maps: Storage, progress: ReportFn, workers: int | None, address: str | None,
               settings_hash: str = "") -> None:
    """Units over a pool of map actors: bounded in flight, retried, progress per batch."""
    import ray

    from dfprep.config import load_config
    from dfprep.runner.pool import ActorPool, connect
    from dfprep.runner.run import worker_count

    config = load_config(None, {"ray.workers": workers, "ray.address": address})
    connect(config, worker_count(config))
    count, resources = actor_plan(settings, worker_count(config), ray.cluster_resources().get("GPU", 0))
    digests = [checkpoint.sha256 for checkpoint in checkpoints]
    with ActorPool(MapWorker, (settings, digests), count, config, resources) as pool:
        failures = pool.run(units, (faces, maps, settings_hash), lambda message: progress(*message))
    if failures:
        first = next(iter(failures.items()))
        raise DfprepError(f"{len(failures)} map shard(s) failed after retries (first: {first[0]}: {first[1]}); "
                          f"rerun the same command to complete them")


def format_map_summary(report: MapReport) -> str:
    """The end-of-run lines: shards, maps written, wall time, throughput."""
    rate = report.maps_written / report.seconds if report.seconds > 0 else 0.0
    lines = [f"dfprep maps ({report.method}) → {report.output}"]
    if report.units_skipped == report.units_total:
        lines.append("  nothing to do: every map shard was already committed")
    lines.append(f"  shards: {report.units_total} ({report.units_skipped} already committed)")
    lines.append(f"  maps written: {report.maps_written} (total {report.maps_total})")
    if report.removed:
        lines.append(f"  removed {len(report.removed)} stale, uncommitted or overwritten map files")
    lines.append(f"  wall: {report.seconds:.1f} s   {rate:.1f} maps/s")
    if report.note:
        lines.append(f"  note: {report.note}")
    return "\n".join(lines)
