"""Classic CNNs built from ``fastconv.nn`` layers, each the same ``nn.Sequential`` as in PyTorch.

    model = fc.models.lenet5()          # 61,706 parameters, 1x28x28 input
    model = fc.models.cifar_cnn()       # 122,570 parameters, 3x32x32 input
    model = fc.models.resnet20()        # CIFAR ResNet-20 with batch norm and skip connections
    model = fc.models.resnext_cifar()   # a small ResNeXt: bottleneck blocks with grouped 3x3 convolutions

Parameters are drawn from fastconv's generator (``fc.manual_seed``) in float32; ``model.to(np.float64)``
converts. ``MODELS`` maps the names the CLI accepts to these constructors. Each takes `dropout`, the probability
of ``nn.Dropout`` layers after the hidden fully connected layers (LeNet-5, the CIFAR CNN) or before the
classifier (ResNet-20, ResNeXt); with the default 0 there are none.
"""
from __future__ import annotations

from ._checks import check_int
from .nn import (BatchNorm2d, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Linear, MaxPool2d, Module, ReLU,
                 Residual, Sequential)


def _dropout(p: float) -> list[Module]:
    """A Dropout layer of probability p, or none for p = 0."""
    return [Dropout(p)] if p else []


def _feature_size(size: int, what: str) -> int:
    if size < 1:
        raise ValueError(f"the input image is too small for {what}")
    return size


def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, dropout: float = 0.0) -> Sequential:
    """LeNet-5 with ReLU and max pooling: conv6 5x5 pad 2, pool 2, conv16 5x5, pool 2, 120, 84, classes.

    With 1x28x28 inputs and 10 classes it has 61,706 parameters.
    """
    side = _feature_size((check_int("image_size", image_size, 1) // 2 - 4) // 2, "lenet5 (at least 12x12)")
    return Sequential(
        Conv2d(in_channels, 6, 5, padding=2), ReLU(), MaxPool2d(2),
        Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
        Flatten(),
        Linear(16 * side * side, 120), ReLU(), *_dropout(dropout),
        Linear(120, 84), ReLU(), *_dropout(dropout),
        Linear(84, num_classes),
    )


def cifar_cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, dropout: float = 0.0) -> Sequential:
    """The classic small CIFAR-10 CNN: conv32 3x3, pool, conv64 3x3, pool, conv64 3x3, dense 64, dense classes,
    ReLU after every convolution and the first dense layer. 3x32x32 inputs, 10 classes: 122,570 parameters."""
    side = _feature_size(((check_int("image_size", image_size, 1) - 2) // 2 - 2) // 2 - 2,
                         "cifar_cnn (at least 18x18)")
    return Sequential(
        Conv2d(in_channels, 32, 3), ReLU(), MaxPool2d(2),
        Conv2d(32, 64, 3), ReLU(), MaxPool2d(2),
        Conv2d(64, 64, 3), ReLU(),
        Flatten(),
        Linear(64 * side * side, 64), ReLU(), *_dropout(dropout),
        Linear(64, num_classes),
    )


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> list[Module]:
    return [Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            BatchNorm2d(out_channels)]


def _projection(in_channels: int, out_channels: int, stride: int) -> Sequential | None:
    """The shortcut of a block: identity when the shape is kept, else a strided 1x1 convolution with batch norm."""
    if stride == 1 and in_channels == out_channels:
        return None
    return Sequential(*_conv_bn(in_channels, out_channels, 1, stride))


def basic_block(in_channels: int, out_channels: int, stride: int = 1) -> Sequential:
    """ResNet's basic block: relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))."""
    body = Sequential(*_conv_bn(in_channels, out_channels, 3, stride), ReLU(), *_conv_bn(out_channels, out_channels, 3))
    return Sequential(Residual(body, _projection(in_channels, out_channels, stride)), ReLU())


def resnet20(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> Sequential:
    """ResNet-20 for CIFAR (He et al. 2016): conv16 3x3, three stages of three basic blocks at 16, 32 and 64
    channels (stride 2 entering stages 2 and 3), global average pooling, a linear classifier. Shortcuts that
    change shape are 1x1 convolutions with batch norm (option B), so 272,474 parameters with 10 classes."""
    layers: list[Module] = [*_conv_bn(in_channels, 16, 3), ReLU()]
    width = 16
    for stage, out in enumerate((16, 32, 64)):
        for block in range(3):
            layers.append(basic_block(width, out, 2 if stage > 0 and block == 0 else 1))
            width = out
    return Sequential(*layers, GlobalAvgPool2d(), Flatten(), *_dropout(dropout), Linear(64, num_classes))


def resnext_block(in_channels: int, out_channels: int, cardinality: int, group_width: int, stride: int = 1) -> Sequential:
    """ResNeXt's bottleneck: 1x1 to cardinality*group_width channels, a grouped 3x3 (one group per path),
    1x1 to out_channels, each with batch norm, added to the shortcut, then ReLU."""
    inner = cardinality * group_width
    body = Sequential(*_conv_bn(in_channels, inner, 1), ReLU(),
                      *_conv_bn(inner, inner, 3, stride, groups=cardinality), ReLU(),
                      *_conv_bn(inner, out_channels, 1))
    return Sequential(Residual(body, _projection(in_channels, out_channels, stride)), ReLU())


def resnext_cifar(num_classes: int = 10, in_channels: int = 3, cardinality: int = 8, group_width: int = 4,
                  dropout: float = 0.0) -> Sequential:
    """A small CIFAR ResNeXt: conv32 3x3, then two bottleneck blocks per stage at 64, 128 and 256 output channels
    (stride 2 entering stages 2 and 3) whose grouped 3x3 convolutions have `cardinality` paths of
    `group_width`, 2x and 4x `group_width` channels; global average pooling; a linear classifier."""
    layers: list[Module] = [*_conv_bn(in_channels, 32, 3), ReLU()]
    width = 32
    for stage, out in enumerate((64, 128, 256)):
        for block in range(2):
            layers.append(resnext_block(width, out, cardinality, group_width * 2 ** stage,
                                        2 if stage > 0 and block == 0 else 1))
            width = out
    return Sequential(*layers, GlobalAvgPool2d(), Flatten(), *_dropout(dropout), Linear(256, num_classes))


MODELS = {"lenet5": lenet5, "cifar_cnn": cifar_cnn, "resnet20": resnet20, "resnext_cifar": resnext_cifar}
