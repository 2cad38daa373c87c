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
