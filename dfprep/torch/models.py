"""Reference detectors in plain torch (no torchvision, no downloads) and a registry that also takes import paths.

Every model maps a (B, 3, H, W) batch to (B,) real-vs-fake logits (1 = fake) for BCE-with-logits; any
input size works (global average pooling). No pretrained weights are fetched: to start from your own,
write a factory returning an ``nn.Module`` and pass it as ``"package.module:factory"``. Factories may
return (B,), (B, 1) or (B, 2) outputs; ``fake_logit`` turns any of them into the (B,) logit.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

from dfprep.errors import DfprepError
from dfprep.torch._require import require_torch

torch = require_torch()
nn = torch.nn


class ModelBuildError(DfprepError):
    """A model name is neither registered nor an importable factory returning an nn.Module."""


def conv_bn(inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution + batch norm, padded to keep 'same' size at stride 1."""
    return nn.Sequential(nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(outputs))


class ClassifierHead(nn.Module):
    """Global average pool → dropout → one linear logit, flattened to (B,)."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features → (B,) logits."""
        return self.fc(self.dropout(self.pool(features).flatten(1))).squeeze(1)


class TinyCNN(nn.Module):
    """Three strided conv layers and a linear logit: enough for synthetic tests, fast on a laptop CPU."""

    def __init__(self, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        for inputs, outputs in ((3, width), (width, 2 * width), (2 * width, 4 * width)):
            layers += [conv_bn(inputs, outputs, 3, stride=2), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = ClassifierHead(4 * width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B,) logits."""
        return self.head(self.features(images))


class BasicBlock(nn.Module):
    """ResNet's two-3×3 residual block, with a 1×1 projection when the shape changes."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(inputs, outputs, 3, stride), nn.ReLU(inplace=True),
                                  conv_bn(outputs, outputs, 3))
        self.shortcut = conv_bn(inputs, outputs, 1, stride) if (stride != 1 or inputs != outputs) else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Residual sum, then ReLU."""
        return self.relu(self.body(features) + self.shortcut(features))


class ResNet(nn.Module):
    """ResNet-18/34 layout: 7×7 stem, four stages of basic blocks (64→512 channels), one-logit head."""

    def __init__(self, blocks: Sequence[int], dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 7, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        inputs = 64
        for index, count in enumerate(blocks):
            outputs = 64 * 2 ** index
            for block in range(count):
                stages.append(BasicBlock(inputs, outputs, 2 if (block == 0 and index > 0) else 1))
                inputs = outputs
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(inputs, dropout)
        initialise(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B,) logits."""
        return self.head(self.stages(self.stem(images)))


class SqueezeExcite(nn.Module):
    """Channel attention: pool, bottleneck, sigmoid gate (EfficientNet's SE)."""

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), nn.SiLU(inplace=True),
                                  nn.Conv2d(squeezed, channels, 1), nn.Sigmoid())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Re-weight channels."""
        return features * self.gate(features)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, depthwise k×k, SE, 1×1 project; residual when shapes match."""

    def __init__(self, inputs: int, outputs: int, expand: int, kernel: int, stride: int):
        super().__init__()
        hidden = inputs * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [conv_bn(inputs, hidden, 1), nn.SiLU(inplace=True)]
        layers += [conv_bn(hidden, hidden, kernel, stride, groups=hidden), nn.SiLU(inplace=True),
                   SqueezeExcite(hidden, max(1, inputs // 4)), conv_bn(hidden, outputs, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Block output (plus the input when residual)."""
        output = self.body(features)
        return output + features if self.residual else output


# (expand ratio, output channels, repeats, first stride, kernel): a slimmer EfficientNet-B0 layout
EFFICIENTNET_SMALL_STAGES = ((1, 16, 1, 1, 3), (4, 24, 2, 2, 3), (4, 40, 2, 2, 5), (4, 80, 2, 2, 3),
                             (4, 112, 2, 1, 5), (4, 160, 1, 2, 5))


class EfficientNetSmall(nn.Module):
    """A small EfficientNet-style net: 3×3 stem, MBConv+SE stages, 1×1 head conv, one-logit head."""

    def __init__(self, stages: Sequence[tuple[int, int, int, int, int]] = EFFICIENTNET_SMALL_STAGES,
                 head_channels: int = 640, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 32, 3, stride=2), nn.SiLU(inplace=True)]
        inputs = 32
        for expand, outputs, repeats, stride, kernel in stages:
            for repeat in range(repeats):
                layers.append(MBConv(inputs, outputs, expand, kernel, stride if repeat == 0 else 1))
                inputs = outputs
        layers += [conv_bn(inputs, head_channels, 1), nn.SiLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = ClassifierHead(head_channels, dropout)
        initialise(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B,) logits."""
        return self.head(self.features(images))


def initialise(model: nn.Module) -> None:
    """He-normal convolutions, unit batch norms, small linear weights: a stable start without pretraining."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


def tiny_cnn(**kwargs: Any) -> nn.Module:
    """The test model."""
    return TinyCNN(**kwargs)


def resnet18(**kwargs: Any) -> nn.Module:
    """ResNet-18 layout with a one-logit head."""
    return ResNet((2, 2, 2, 2), **kwargs)


def resnet34(**kwargs: Any) -> nn.Module:
    """ResNet-34 layout with a one-logit head."""
    return ResNet((3, 4, 6, 3), **kwargs)


def efficientnet_small(**kwargs: Any) -> nn.Module:
    """Slim EfficientNet-style detector with a one-logit head."""
    return EfficientNetSmall(**kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "tiny_cnn": tiny_cnn, "resnet18": resnet18, "resnet34": resnet34, "efficientnet_small": efficientnet_small,
}


def import_factory(path: str) -> Callable[..., Any]:
    """Resolve "package.module:factory" to the callable it names."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ModelBuildError(f"cannot import model factory {path!r}: {exc}") from exc
    if not callable(target):
        raise ModelBuildError(f"{path!r} is not callable")
    return target


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """A registered model by name, or any factory given as "package.module:factory"."""
    if ":" in name:
        factory = import_factory(name)
    elif name in MODELS:
        factory = MODELS[name]
    else:
        raise ModelBuildError(f"unknown model {name!r}: use one of {sorted(MODELS)} or 'package.module:factory'")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelBuildError(f"{name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def fake_logit(output: torch.Tensor) -> torch.Tensor:
    """(B,) fake logit from a (B,), (B, 1) or (B, 2) model output (two logits: their difference)."""
    if output.dim() == 1:
        return output
    if output.dim() == 2 and output.shape[1] == 1:
        return output[:, 0]
    if output.dim() == 2 and output.shape[1] == 2:
        return output[:, 1] - output[:, 0]
    raise ModelBuildError(f"model output of shape {tuple(output.shape)}: expected (B,), (B, 1) or (B, 2)")


# ---------------------------------------------------------------- checkpoints: data, never code

PLAIN_TYPES = (bool, int, float, str, type(None))


def plain_kwargs(kwargs: Any, source: str) -> dict[str, Any]:
    """A checkpoint's model_kwargs: identifier names and plain numbers/strings only, or a one-line error."""
    if not isinstance(kwargs, dict):
        raise ModelBuildError(f"{source}: model_kwargs must be a mapping, got {type(kwargs).__name__}")
    for name, value in kwargs.items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ModelBuildError(f"{source}: model_kwargs has an invalid argument name {str(name)[:40]!r}")
        if not isinstance(value, PLAIN_TYPES):
            raise ModelBuildError(f"{source}: model_kwargs[{name!r}] is a {type(value).__name__}; "
                                  "only plain numbers, strings, booleans and null are accepted")
    return dict(kwargs)


def trusted_factory(name: str, trusted: Sequence[str], source: str) -> Callable[..., nn.Module]:
    """The factory for a checkpoint's recorded model name: a registered model, or one the user named on the command line.

    A checkpoint is a file people download and share: the name it records is never imported on its own
    authority ("shutil:copyfile" would copy a file before failing). Only a name the user also passed as
    --model is imported.
    """
    if not isinstance(name, str):
        raise ModelBuildError(f"{source}: model_name must be a string, got {type(name).__name__}")
    if name in trusted and ":" in name:
        return import_factory(name)
    if name in MODELS:
        return MODELS[name]
    if ":" in name:
        raise ModelBuildError(f"{source} names the model factory {name[:80]!r}; dfprep never imports code a file "
                              f"names: if you trust it, pass --model {name[:80]}")
    raise ModelBuildError(f"{source}: unknown model {name[:80]!r} (registered: {', '.join(sorted(MODELS))})")


def state_dict_mismatch(expected: Any, found: Any) -> str | None:
    """How a state_dict differs from the architecture's (missing, unexpected, reshaped keys), or None."""
    if not isinstance(found, dict) or not all(isinstance(v, torch.Tensor) for v in found.values()):
        return "state_dict is not a mapping of tensors"
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    if not (missing or unexpected or reshaped):
        return None
    return "; ".join(f"{label} {len(keys)} (e.g. {str(keys[0])[:60]})" for label, keys in
                     (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped)) if keys)


def model_from_checkpoint(payload: Any, source: str, trusted: Sequence[str] = ()) -> nn.Module:
    """The model a loaded checkpoint describes, weights loaded, in eval mode; only plain data is taken from it.

    Registered architectures are first built on the meta device (no memory), so a checkpoint whose
    model_kwargs would allocate a huge model, or whose weights do not fit, fails before any allocation.
    """
    if not isinstance(payload, dict) or not {"model_name", "state_dict"} <= set(payload):
        raise ModelBuildError(f"{source}: not a dfprep checkpoint (needs 'model_name' and 'state_dict')")
    config = payload.get("config") or {}
    if not isinstance(config, dict):
        raise ModelBuildError(f"{source}: its config must be a mapping, got {type(config).__name__}")
    kwargs = plain_kwargs(config.get("model_kwargs") or {}, source)
    factory = trusted_factory(payload["model_name"], trusted, source)
    if factory in MODELS.values():
        with torch.device("meta"):
            skeleton = _call_factory(factory, kwargs, source)
        problem = state_dict_mismatch(skeleton.state_dict(), payload["state_dict"])
        if problem is not None:
            raise ModelBuildError(f"{source}: state_dict does not match its declared architecture "
                                  f"{payload['model_name']!r}: {problem}")
    model = _call_factory(factory, kwargs, source)
    problem = state_dict_mismatch(model.state_dict(), payload["state_dict"])
    if problem is not None:
        raise ModelBuildError(f"{source}: state_dict does not match its declared architecture "
                              f"{payload['model_name']!r}: {problem}")
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def _call_factory(factory: Callable[..., Any], kwargs: dict[str, Any], source: str) -> nn.Module:
    """Call a model factory with checked kwargs; a wrong argument is a one-line error, not a traceback."""
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelBuildError(f"{source}: model_kwargs do not fit the model ({str(exc)[:120]})") from None
    if not isinstance(model, nn.Module):
        raise ModelBuildError(f"{source}: the model factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check_trusted_names(names: Sequence[str]) -> tuple[str, ...]:
    """--model values for evaluate/maps: registered names or package.module:factory paths."""
    for name in names:
        if name not in MODELS and ":" not in name:
            raise ModelBuildError(f"--model {name!r}: use one of {sorted(MODELS)} or 'package.module:factory'")
    return tuple(names)
