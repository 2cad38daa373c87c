"""The configuration's shape: one frozen dataclass per stage, and the choices its string keys accept."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

MAP_METHODS = ("landmarks", "cam")  # primary-region map methods (dfprep maps --method, output.maps)
FUSIONS = ("mean", "max")  # how a CAM zoo's per-detector maps are fused
TARGETS = ("predicted", "label", "fake")  # whose score Grad-CAM explains (PRLE: the predicted class)


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
    upsample_ladder: bool = True  # largest: try upsample 0..upsample, stop at the first that finds a face
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

    preset: str = "deepfakebench"  # deepfakebench | arcface5 | caddm | box
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
    registered_original: bool = False  # fakes also store their original's frame at the same index, cut with the
    # fake's own matrix (<key>.original.<ext>, and <key>.original_context.<ext> beside a context crop)


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
    ship_code: bool = False  # upload this dfprep package to the workers (nodes with the dependencies, not dfprep)
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


@dataclass(frozen=True)
class CamRecipe:
    """How a zoo's CAMs become one map: PRLE's choices by default (see docs/protocols.md, ## prle)."""

    layers: tuple[str, ...] = ()  # default: each architecture's PRLE-style layers (dfprep.torch.cam)
    target: str = "predicted"
    fusion: str = "mean"
    threshold: float = 0.3
    released_halving: bool = False  # halve each detector's map before fusion, as PRLE's saved .npy maps are
