"""Train a reference detector on dfprep shards, checkpointing every epoch and resuming exactly where it stopped.

Reproducibility contract: the model is initialised from ``seed``; each epoch reseeds torch's global RNG
from (seed, epoch) and streams its data in the order FaceShards derives from (seed, epoch); the learning
rate is constant. So an interrupted run resumed from its last checkpoint (weights, optimizer and AMP
scaler state, epoch and step counters) reaches the same epochs, steps and — on CPU with a fixed worker
count — the same weights as an uninterrupted one. Checkpoints hold only tensors and plain Python values:
``torch.load(path, weights_only=True)`` reads them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence, get_args

from dfprep import __version__
from dfprep.errors import DfprepError
from dfprep.torch._require import require_torch
from dfprep.torch.data import FaceShards, derive_seed
from dfprep.torch.evaluate import frame_loader, load_checkpoint, pick_device, require_outputs, score_frames
from dfprep.torch.metrics import auc, video_scores
from dfprep.torch.models import build_model, fake_logit
from dfprep.torch.shardlist import is_folder, join
from dfprep.torch.trainconfig import RESUME_FIELDS, Optimizer, TrainConfig
from dfprep.torch.transforms import Compose, Normalize, PrimaryRegionErasing, RandomHorizontalFlip

torch = require_torch()

OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
CHECKPOINT = re.compile(r"^checkpoint-(\d{3,})\.pt$")
METRIC_COLUMNS = ("epoch", "steps", "global_step", "samples", "train_loss", "lr", "val_frames", "val_frame_auc",
                  "val_video_auc", "seconds")


class TrainError(DfprepError):
    """Training cannot start or resume as asked (missing maps, mismatched run folder, bad option)."""


@dataclass
class RunState:
    """Where a run stands: the last finished epoch, optimizer steps so far and the metric rows."""

    epoch: int = 0
    step: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)


def absolute(out: str) -> str:
    """A local OUT as an absolute path (the run records it); a URI (s3://…) as given."""
    return out if "://" in out else os.path.abspath(out)


def check_options(config: TrainConfig) -> None:
    """Fail before any work on options that cannot work (unknown optimizer, erasing without maps, …)."""
    if config.optimizer not in OPTIMIZERS:
        raise TrainError(f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
    if config.epochs < 1 or config.batch_size < 1 or config.lr <= 0:
        raise TrainError("epochs and batch size must be >= 1 and the learning rate > 0")
    if config.region_erasing and not config.maps:
        raise TrainError("--region-erasing needs primary-region maps: add --maps NAME (e.g. --maps landmarks)")
    for out in config.out_dirs if config.maps else ():
        if not is_folder(join(out, "maps", config.maps)):
            raise TrainError(f"maps {config.maps!r} not found in {out} (expected {out}/maps/{config.maps}/); "
                             f"run `dfprep maps {out} --method {config.maps}` first")


def train_transform(config: TrainConfig) -> Compose:
    """Flip, primary-region erasing when asked, then normalisation."""
    steps: list[Any] = [RandomHorizontalFlip(0.5)]
    if config.region_erasing:
        steps.append(PrimaryRegionErasing())
    steps.append(Normalize(config.mean, config.std))
    return Compose(steps)


def train_stream(config: TrainConfig) -> FaceShards:
    """The shuffled, seeded training split of every OUT folder."""
    return FaceShards(list(config.out_dirs), split="train", maps=config.maps, shuffle=config.shuffle_buffer,
                      seed=config.seed, balance=config.balance, transform=train_transform(config),
                      skip_bad_shards=config.skip_bad_shards)


def has_split(out_dirs: Sequence[str], split: str) -> bool:
    """Whether any OUT folder holds samples of the split."""
    return bool(FaceShards(list(out_dirs), split=split).shards)


def make_optimizer(config: TrainConfig, parameters: Any) -> Any:
    """Adam, AdamW or SGD (momentum 0.9, Nesterov) at the run's constant learning rate."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=0.9, nesterov=True,
                               weight_decay=config.weight_decay)
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer(parameters, lr=config.lr, weight_decay=config.weight_decay)


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's per-epoch checkpoints, oldest first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint-*.pt") if (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def clear_run(run_dir: Path) -> None:
    """--no-resume: remove this module's own files (checkpoints, model.pt, metrics) so nothing stale resumes."""
    for path in [*checkpoints(run_dir), run_dir / "model.pt", run_dir / "metrics.jsonl", run_dir / "metrics.csv"]:
        path.unlink(missing_ok=True)


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """A checkpoint resumes only the run it came from: the schedule-defining options must match."""
    current = config.to_dict()
    changed = [name for name in RESUME_FIELDS if saved.get(name) != current.get(name)]
    if changed:
        details = ", ".join(f"{n}: {saved.get(n)!r} → {current.get(n)!r}" for n in changed)
        raise TrainError(f"{path} belongs to a different run ({details}); use a new run folder or --no-resume")


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary name and rename, so a crash never leaves a half-written file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """checkpoint-EEE.pt for the epoch, and model.pt as the latest."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = run_dir / f"checkpoint-{payload['epoch']:03d}.pt"
    atomic_write(path, buffer.getvalue())
    atomic_write(run_dir / "model.pt", buffer.getvalue())
    return path


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """metrics.jsonl and metrics.csv, rewritten from the checkpointed rows (consistent after a resume)."""
    atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows).encode())
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=METRIC_COLUMNS, extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(run_dir / "metrics.csv", table.getvalue().encode())


def run_epoch(model: Any, loader: Any, optimizer: Any, scaler: Any, device: Any, max_steps: int | None,
              bar: Any) -> tuple[float, int, int]:
    """One pass of BCE-with-logits training; returns (mean loss, steps, samples)."""
    model.train()
    total_loss, steps, samples = 0.0, 0, 0
    use_amp = device.type == "cuda"
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True).float()
        with torch.autocast(device.type, enabled=use_amp):
            logits = fake_logit(model(images))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss, steps, samples = total_loss + float(loss.detach()), steps + 1, samples + labels.numel()
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss / steps:.4f}", refresh=False)
        if max_steps is not None and steps >= max_steps:
            break
    return total_loss / max(steps, 1), steps, samples


def validate(model: Any, config: TrainConfig, device: Any) -> dict[str, Any]:
    """Frame and video AUC on the val split."""
    loader = frame_loader(list(config.out_dirs), "val", config.to_dict(), config.batch_size, config.workers,
                          skip_bad_shards=config.skip_bad_shards)
    frames = score_frames(model, loader, device)
    videos = video_scores(frames.video_ids, frames.labels, frames.scores)
    value = auc(frames.labels, frames.scores)
    video_value = auc([label for label, _ in videos.values()], [score for _, score in videos.values()])
    return {"val_frames": int(frames.scores.size), "val_frame_auc": None if math.isnan(value) else value,
            "val_video_auc": None if math.isnan(video_value) else video_value}


def batches_per_epoch(dataset: FaceShards, config: TrainConfig) -> int | None:
    """The progress bar's total: expected batches, capped by max_steps_per_epoch."""
    samples = dataset.estimated_length()
    total = math.ceil(samples / config.batch_size) if samples else None
    if config.max_steps_per_epoch is not None:
        total = min(total or config.max_steps_per_epoch, config.max_steps_per_epoch)
    return total


def restore(run_dir: Path, config: TrainConfig, model: Any, optimizer: Any, scaler: Any) -> RunState:
    """Load the newest checkpoint of the run folder into model, optimizer and scaler."""
    found = checkpoints(run_dir)
    if not found:
        return RunState()
    payload = load_checkpoint(found[-1])
    check_resumable(payload["config"], config, found[-1])
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    if payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    return RunState(int(payload["epoch"]), int(payload["step"]), list(payload["metrics"]))


def checkpoint_payload(config: TrainConfig, model: Any, optimizer: Any, scaler: Any, state: RunState) -> dict[str, Any]:
    """What a checkpoint holds: tensors and plain values only."""
    return {"model_name": config.model, "state_dict": model.state_dict(), "config": config.to_dict(),
            "epoch": state.epoch, "step": state.step, "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "metrics": state.metrics, "dfprep_version": __version__}


def train(config: TrainConfig, run_dir: str | os.PathLike[str], *, resume: bool = True,
          progress: bool = True) -> list[dict[str, Any]]:
    """Train (or resume) a detector on the train split of every OUT in the config; returns the per-epoch metric rows.

    `resume=False` starts over (this run folder's checkpoints and metrics are removed first).
    """
    outs = [config.out_dirs] if isinstance(config.out_dirs, (str, os.PathLike)) else config.out_dirs
    config = replace(config, out_dirs=tuple(absolute(os.fspath(o)) for o in outs))
    check_options(config)
    require_outputs(config.out_dirs, config.allow_incomplete)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    if not resume:
        clear_run(run)
    target = pick_device(config.device)
    torch.manual_seed(config.seed)
    network = build_model(config.model, **config.model_kwargs).to(target)
    stepper = make_optimizer(config, network.parameters())
    scaler = torch.amp.GradScaler(target.type, enabled=target.type == "cuda")
    state = restore(run, config, network, stepper, scaler)
    return train_epochs(config, run, network, stepper, scaler, state, progress)


def train_epochs(config: TrainConfig, run: Path, model: Any, optimizer: Any, scaler: Any, state: RunState,
                 progress: bool) -> list[dict[str, Any]]:
    """Epochs state.epoch+1 … config.epochs, each followed by validation, a checkpoint and the metric files."""
    from tqdm import tqdm

    from dfprep.config.console import bar_disable

    device = next(model.parameters()).device
    dataset = train_stream(config)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers,
                                         pin_memory=device.type == "cuda")
    with_val = has_split(config.out_dirs, "val")
    for epoch in range(state.epoch + 1, config.epochs + 1):
        started = time.monotonic()
        torch.manual_seed(derive_seed(config.seed, epoch))
        dataset.set_epoch(epoch)
        with tqdm(total=batches_per_epoch(dataset, config), desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                  disable=bar_disable(not progress), dynamic_ncols=True) as bar:
            loss, steps, samples = run_epoch(model, loader, optimizer, scaler, device, config.max_steps_per_epoch, bar)
        state.epoch, state.step = epoch, state.step + steps
        row = {"epoch": epoch, "steps": steps, "global_step": state.step, "samples": samples, "train_loss": loss,
               "lr": config.lr, **(validate(model, config, device) if with_val else {}),
               "seconds": round(time.monotonic() - started, 3)}
        state.metrics.append(row)
        save_checkpoint(run, checkpoint_payload(config, model, optimizer, scaler, state))
        write_metrics(run, state.metrics)
    return state.metrics
