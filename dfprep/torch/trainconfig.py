"""What defines a training run: TrainConfig is the API of `train(config)`; each field says its default, its help,
whether a resume must keep it (RESUME_FIELDS) and whether `dfprep train` has a flag for it (dfprep.torch.commands
makes the flags from these fields). No torch here: the CLI lists the command without torch installed."""

from __future__ import annotations

import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal

Optimizer = Literal["adam", "adamw", "sgd"]


def knob(default: Any, help: str, *, defines_run: bool = False, low: int | None = None,
         cli: bool = True, cli_default: Any = MISSING) -> Any:
    """A TrainConfig field: its default, its --help text, whether a resumed run must keep it, its CLI flag."""
    meta = {"help": help, "defines_run": defines_run, "low": low, "cli": cli, "cli_default": cli_default}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; stored in every checkpoint."""

    out_dirs: tuple[str, ...] = field(metadata={"defines_run": True, "cli": False})  # the OUT folders (arguments)
    model: str = knob("tiny_cnn", "tiny_cnn, resnet18, resnet34, efficientnet_small, or package.module:factory.",
                      defines_run=True)
    model_kwargs: dict[str, Any] = knob({}, "Keyword arguments of the model factory.", defines_run=True, cli=False)
    epochs: int = knob(10, "Epochs to reach (a resumed run continues up to this).", low=1)
    batch_size: int = knob(32, "Samples per optimizer step.", defines_run=True, low=1)
    lr: float = knob(1e-3, "Constant learning rate.", defines_run=True)
    optimizer: Optimizer = knob("adam", "Optimizer (sgd: momentum 0.9, Nesterov).", defines_run=True)
    weight_decay: float = knob(0.0, "Weight decay of the optimizer.", defines_run=True)
    workers: int = knob(0, "DataLoader workers.", low=0, cli_default=2)  # the command runs 2 loader processes
    region_erasing: bool = knob(False, "PRLE primary-region erasing (needs --maps).", defines_run=True)
    maps: str | None = knob(None, "Companion map shards to stream (OUT/maps/NAME), e.g. landmarks.", defines_run=True)
    seed: int = knob(0, "Seeds the model's initialisation and every epoch's data order.", defines_run=True)
    device: str = knob("auto", "auto (CUDA with AMP when available), cpu, cuda:N.")
    max_steps_per_epoch: int | None = knob(None, "Cap optimizer steps per epoch.", defines_run=True, low=1)
    shuffle_buffer: int = knob(1000, "Samples in the streaming shuffle buffer.", defines_run=True, low=0)
    balance: bool | str = knob(False, "Resample so real:fake ≈ 1:1: over or under (False: as stored).",
                               defines_run=True, cli=False)  # the command's --balance none|over|under
    skip_bad_shards: bool = knob(False, "Skip truncated/corrupt shards with a warning instead of stopping.")
    allow_incomplete: bool = knob(False, "Read an OUT that is incomplete or damaged instead of refusing.")
    mean: tuple[float, ...] = knob((0.5, 0.5, 0.5), "Normalisation mean per channel.", defines_run=True, cli=False)
    std: tuple[float, ...] = knob((0.5, 0.5, 0.5), "Normalisation std per channel.", defines_run=True, cli=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and scalars only, so the checkpoint stays weights_only-loadable."""
        return json.loads(json.dumps(asdict(self)))


# a resumed run must keep these, or it would silently become a different run
RESUME_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("defines_run"))
