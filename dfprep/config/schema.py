"""The configuration's shape: one frozen dataclass per stage, and the choices its string keys accept."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

# The enumerated options: each Literal is the one list of what a key accepts (the loader checks against it).
MapMethod = Literal["landmarks", "cam"]  # primary-region map methods (dfprep maps --method, output.maps)
Fusion = Literal["mean", "max"]  # how a CAM zoo's per-detector maps are fused
Target = Literal["predicted", "label", "fake"]  # whose score Grad-CAM explains (PRLE: the predicted class)
Split = Literal["train", "val", "test"]
FolderSplit = Literal["train", "val", "test", "unassigned"]
SamplingMode = Literal["uniform", "stride", "fps", "all", "keyframes"]
Detector = Literal["cascade", "hog", "cnn"]
FaceSelection = Literal["largest", "all", "centre"]
AlignmentPreset = Literal["deepfakebench", "arcface5", "caddm", "box"]
ImageFormat = Literal["jpg", "png", "webp"]

MAP_METHODS: tuple[str, ...] = get_args(MapMethod)
FUSIONS: tuple[str, ...] = get_args(Fusion)
TARGETS: tuple[str, ...] = get_args(Target)


# Each dataset adapter's own options. A recipe writes them flat under `dataset:` (the keys and the output hash
# are unchanged); the loader and the catalog hand an adapter only its own dataclass and refuse a key that
# belongs to another adapter. Their defaults are the ones DatasetConfig uses (one source).
@dataclass(frozen=True)
class FFPPOptions:
    """FaceForensics++ (and DeepFakeDetection, shipped inside it)."""

    splits: str | None = None  # FF++ split folder (train/val/test.json); default <root>/splits
    dfd_split: Split = "test"  # FF++ DeepFakeDetection has no official split


@dataclass(frozen=True)
class CelebDFOptions:
    """Celeb-DF: the official test list; train/val split by target identity."""

    val_fraction: float = 0.1  # share of identities held out for val
    seed: int = 0  # deterministic identity → split assignment


@dataclass(frozen=True)
class DFDCOptions:
    """DFDC full release."""

    dfdc_val_parts: tuple[int, ...] = ()  # DFDC train parts used as val


@dataclass(frozen=True)
class DFDCPOptions:
    """DFDC preview: everything comes from its dataset.json."""


@dataclass(frozen=True)
class DeeperForensicsOptions:
    """DeeperForensics-1.0: its reals live in an FF++ tree."""

    ffpp_root: str | None = None


@dataclass(frozen=True)
class FolderOptions:
    """Any folder of real/ and fake/ videos, or a CSV."""

    default_split: FolderSplit = "train"  # when neither folders nor CSV give one


ADAPTER_OPTIONS: dict[str, type] = {"ffpp": FFPPOptions, "celebdf": CelebDFOptions, "dfdc": DFDCOptions,
                                    "dfdcp": DFDCPOptions, "deeperforensics": DeeperForensicsOptions,
                                    "folder": FolderOptions}
COMMON_DATASET_KEYS = ("name", "root", "compressions", "methods")  # every adapter: which root, which videos


@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset to catalog: the common keys plus every adapter's own (each adapter reads only its own)."""

    name: str | None = None
    root: str | None = None
    splits: str | None = FFPPOptions.splits
    compressions: tuple[str, ...] = ()  # keep only these (e.g. c23); empty keeps all
    methods: tuple[str, ...] = ()  # keep only these methods; empty keeps all
    dfd_split: Split = FFPPOptions.dfd_split
    val_fraction: float = CelebDFOptions.val_fraction
    dfdc_val_parts: tuple[int, ...] = DFDCOptions.dfdc_val_parts
    ffpp_root: str | None = DeeperForensicsOptions.ffpp_root
    default_split: FolderSplit = FolderOptions.default_split
    seed: int = CelebDFOptions.seed


@dataclass(frozen=True)
class SamplingConfig:
    """Which frames of each video become samples."""

    mode: SamplingMode = "uniform"  # uniform | stride | fps | all | keyframes
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

    detector: Detector = "cascade"  # cascade (hog, then cnn on frames hog left faceless) | hog | cnn
    working_size: int = 640  # longer side of the frame the detector sees (0 = full size)
    upsample: int = 1
    upsample_ladder: bool = True  # largest: try upsample 0..upsample, stop at the first that finds a face
    min_score: float = 0.0  # detector score below which a detection is dropped (dlib's own threshold)
    tracking: bool = True  # search near the previous box before a full-frame detection
    track_window: float = 2.0  # search window side = previous box side × this
    select: FaceSelection = "largest"  # largest | all | centre
    landmarks: str = "dlib68"  # registry name or path of the shape predictor
    identity: bool = False  # 128-D dlib face descriptor per track, median per video (for `dfprep leakage`)
    identity_frames: int = 8  # descriptors computed per track (spread over the video)


@dataclass(frozen=True)
class AlignmentConfig:
    """How a face becomes a crop."""

    preset: AlignmentPreset = "deepfakebench"  # deepfakebench | arcface5 | caddm | box
    size: int = 256
    scale: float = 1.3  # face-to-crop zoom (deepfakebench 1.3, caddm 0.9); box: margin factor
    context_scale: float = 0.0  # > 0 adds a wider context crop (this × the face crop's extent)


@dataclass(frozen=True)
class OutputConfig:
    """Sample encoding and shard sizing."""

    image_format: ImageFormat = "jpg"  # jpg | png | webp
    quality: int = 95
    videos_per_shard: int | None = None  # None: sized for the workers, at most 48 (~1.5k samples at 32 frames)
    maps: tuple[str, ...] = ()  # region maps computed inline during extract (e.g. landmarks)
    registered_original: bool = False  # fakes also store their original's frame at the same index, cut with the
    # fake's own matrix (<key>.original.<ext>, and <key>.original_context.<ext> beside a context crop)


@dataclass(frozen=True)
class CamConfig:
    """PRLE's CAM maps when `output.maps` names `cam`: a recipe cannot ship trained detectors, so the zoo is
    given on the command line (`--set cam.zoo=[a.pt,b.pt]`); without one, extract prints the next commands."""

    zoo: tuple[str, ...] = ()  # checkpoints from `dfprep train`, one per zoo member
    layers: tuple[str, ...] = ()  # Grad-CAM modules; empty: each architecture's PRLE-style layers
    target: Target = "predicted"  # predicted (PRLE's released code) | label | fake
    fusion: Fusion = "mean"  # mean (PRLE) | max
    threshold: float = 0.3  # PRLE: values <= 0.3 of the min-max normalised fused map are zeroed
    released_halving: bool = False  # halve each detector's map first, as PRLE's saved maps are (0.3 acts as 0.6)
    name: str = "cam"  # folder under OUT/maps/


@dataclass(frozen=True)
class RayConfig:
    """Where and how widely to run."""

    workers: int | None = None  # None = all CPUs; 0 = in-process
    threads: int | None = None  # in-process video threads: None = every CPU up to 4 (1 with workers 0)
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
    target: Target = "predicted"
    fusion: Fusion = "mean"
    threshold: float = 0.3
    released_halving: bool = False  # halve each detector's map before fusion, as PRLE's saved .npy maps are
