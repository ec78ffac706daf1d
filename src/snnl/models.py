"""Models used in the SNNL experiments: an MLP, the reference MNIST CNN and ResNet-20.

Conventions shared by every model here:

- Inputs are images (or vectors) in [0, 1]; normalisation ``(x - mean) / std``
  happens inside the model in a :class:`Normalize` module, so attacks and
  corruptions can work in input units.
- Every hidden activation is its own module with a stable name, and
  ``model.hidden_layer_names`` lists the hidden post-ReLU outputs the SNNL
  paper regularises (every hidden layer, not the logits), named exactly as
  ``model.named_modules()`` names them. :mod:`snnl.taps` hooks them by name.
- The final linear layer is the module ``logits``; ``forward`` returns logits.

>>> import torch
>>> model = build_model("mlp", (1, 8, 8), 10, widths=(32, 16))
>>> model(torch.rand(2, 1, 8, 8)).shape
torch.Size([2, 10])
>>> model.hidden_layer_names
('relu1', 'relu2')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Normalize",
    "MLP",
    "ReferenceCNN",
    "BasicBlock",
    "ResNet20",
    "AutoencoderClassifier",
    "MLPGenerator",
    "MLPDiscriminator",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "GAN_ARCHITECTURES",
    "build_gan",
    "build_model",
    "available_models",
]

Stat = float | Sequence[float] | Tensor


def _check_shape(input_shape: Sequence[int], model: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 0 or any(s < 1 for s in shape):
        raise ValueError(f"{model}: input_shape must be positive sizes, got {tuple(input_shape)}")
    return shape


def _check_image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    shape = _check_shape(input_shape, model)
    if len(shape) != 3:
        raise ValueError(
            f"{model} needs image inputs shaped (channels, height, width), got input_shape "
            f"{shape}; for 1-D inputs (e.g. mnist1d vectors) use the 'mlp' model"
        )
    return shape  # type: ignore[return-value]


class Normalize(nn.Module):
    """``(x - mean) / std`` with per-channel or scalar statistics stored as buffers.

    ``mean`` and ``std`` are scalars or sequences of length C (one value per
    channel, dimension 1 of the input). Buffers move with ``.to(device)`` and
    are saved in the state dict.

    >>> norm = Normalize([0.5, 0.25], [0.5, 2.0])
    >>> norm(torch.ones(1, 2, 1, 1)).flatten().tolist()
    [1.0, 0.375]
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Stat = 0.0, std: Stat = 1.0) -> None:
        super().__init__()
        m = torch.as_tensor(mean, dtype=torch.float32).flatten()
        s = torch.as_tensor(std, dtype=torch.float32).flatten()
        if m.numel() == 0 or s.numel() == 0:
            raise ValueError("Normalize: mean and std must not be empty")
        if not (torch.isfinite(m).all() and torch.isfinite(s).all()):
            raise ValueError(f"Normalize: mean and std must be finite, got {m}, {s}")
        if (s <= 0).any():
            raise ValueError(f"Normalize: std must be > 0, got {s.tolist()}")
        if m.numel() != s.numel() and 1 not in (m.numel(), s.numel()):
            raise ValueError(
                f"Normalize: mean has {m.numel()} values but std has {s.numel()} "
                "(use scalars or one value per channel)"
            )
        self.register_buffer("mean", m)
        self.register_buffer("std", s)

    def forward(self, x: Tensor) -> Tensor:
        c = max(self.mean.numel(), self.std.numel())
        if c == 1:
            return (x - self.mean) / self.std
        if x.dim() < 2 or x.shape[1] != c:
            raise ValueError(
                f"Normalize has {c} per-channel values but the input is shaped "
                f"{tuple(x.shape)} (expected (N, {c}, ...))"
            )
        view = (1, c) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(view)) / self.std.view(view)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class MLP(nn.Module):
    """Fully connected ReLU network: flatten -> [Linear -> ReLU] per width -> Linear.

    The default widths (500, 500, 2000) are those of the independent SNNL
    reproduction (784-500-500-2000-10 on MNIST). Modules: ``normalize``,
    ``flatten``, ``fc1``, ``relu1``, ..., ``fc{L}``, ``relu{L}``, ``logits``;
    ``hidden_layer_names = ("relu1", ..., "relu{L}")``.

    Shapes: input (N, *input_shape) -> logits (N, num_classes).

    >>> m = MLP((1, 40), 3, widths=(8,))
    >>> m(torch.zeros(5, 1, 40)).shape, m.hidden_layer_names
    (torch.Size([5, 3]), ('relu1',))
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int] = (500, 500, 2000),
        *,
        mean: Stat = 0.0,
        std: Stat = 1.0,
    ) -> None:
        super().__init__()
        shape = _check_shape(input_shape, "MLP")
        _check_classes(num_classes)
        widths = tuple(int(w) for w in widths)
        if any(w < 1 for w in widths):
            raise ValueError(f"MLP: widths must be positive, got {widths}")
        self.input_shape = shape
        self.normalize = Normalize(mean, std)
        self.flatten = nn.Flatten()
        self._blocks: list[tuple[str, str]] = []
        d = math.prod(shape)
        for i, w in enumerate(widths, start=1):
            self.add_module(f"fc{i}", nn.Linear(d, w))
            self.add_module(f"relu{i}", nn.ReLU())
            self._blocks.append((f"fc{i}", f"relu{i}"))
            d = w
        self.logits = nn.Linear(d, num_classes)
        self.hidden_layer_names: tuple[str, ...] = tuple(r for _, r in self._blocks)

    def forward(self, x: Tensor) -> Tensor:
        h = self.flatten(self.normalize(x))
        for fc, relu in self._blocks:
            h = getattr(self, relu)(getattr(self, fc)(h))
        return self.logits(h)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride).

    Total padding per spatial dim is ``max((out - 1) * stride + kernel - in, 0)``,
    split with the extra pixel at the bottom/right, as TensorFlow does.

    >>> Conv2dSame(1, 2, 8, stride=2)(torch.zeros(1, 1, 28, 28)).shape
    torch.Size([1, 2, 14, 14])
    """

    def forward(self, x: Tensor) -> Tensor:
        pads: list[int] = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _same_size(size: int, stride: int) -> int:
    return -(-size // stride)


def _valid_size(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def _check_classes(num_classes: int) -> None:
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


class ReferenceCNN(nn.Module):
    """The reference MNIST CNN of the SNNL code (cleverhans ``ModelBasicCNN``).

    conv1 ``channels``@8x8 stride 2 SAME -> ReLU -> conv2 ``2*channels``@6x6
    stride 2 VALID -> ReLU -> conv3 ``2*channels``@5x5 stride 1 VALID -> ReLU ->
    flatten -> linear ``logits``. On 28x28 inputs the spatial sizes are
    28 -> 14 -> 5 -> 1.

    Small inputs: where a VALID convolution would leave no output (input
    smaller than the kernel, e.g. the 8x8 ``digits`` images: 8 -> 4 -> 4 < 6),
    that convolution uses TensorFlow SAME padding instead (output
    ceil(in / stride)); ``self.paddings`` records the padding each conv uses.
    On 8x8 inputs: 8 -> 4 -> 2 (SAME) -> 2 (SAME).

    ``hidden_layer_names = ("relu1", "relu2", "relu3")``.

    ``init="authors"`` reproduces the reference code's initialisation: every
    weight (convolutions and logits) drawn from N(0, 2 / fan_in) (cleverhans'
    ``HeReLuNormalInitializer``), biases zero, and no input normalisation
    (raw [0, 1] inputs; ``mean``/``std`` are ignored). ``init="default"`` keeps
    PyTorch's initialisation and normalises with ``mean``/``std``.

    >>> m = ReferenceCNN((1, 8, 8), 10, channels=4)
    >>> m(torch.zeros(2, 1, 8, 8)).shape, m.paddings
    (torch.Size([2, 10]), ('same', 'same', 'same'))
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        channels: int = 64,
        mean: Stat = 0.0,
        std: Stat = 1.0,
        init: str = "default",
    ) -> None:
        super().__init__()
        c, h, w = _check_image_shape(input_shape, "ReferenceCNN")
        _check_classes(num_classes)
        if channels < 1:
            raise ValueError(f"ReferenceCNN: channels must be >= 1, got {channels}")
        if init not in ("default", "authors"):
            raise ValueError(f"ReferenceCNN: unknown init {init!r}; expected default or authors")
        self.input_shape = (c, h, w)
        self.init = init
        self.normalize = Normalize(mean, std) if init == "default" else Normalize(0.0, 1.0)
        specs = [  # (out channels, kernel, stride, padding the reference uses)
            (channels, 8, 2, "same"),
            (2 * channels, 6, 2, "valid"),
            (2 * channels, 5, 1, "valid"),
        ]
        in_c, paddings = c, []
        for i, (out_c, k, s, pad) in enumerate(specs, start=1):
            if pad == "valid" and min(h, w) < k:
                pad = "same"  # VALID would leave no output on this small input
            if pad == "same":
                conv: nn.Conv2d = Conv2dSame(in_c, out_c, k, stride=s)
                h, w = _same_size(h, s), _same_size(w, s)
            else:
                conv = nn.Conv2d(in_c, out_c, k, stride=s)
                h, w = _valid_size(h, k, s), _valid_size(w, k, s)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"relu{i}", nn.ReLU())
            paddings.append(pad)
            in_c = out_c
        self.paddings: tuple[str, ...] = tuple(paddings)
        self.feature_shape = (in_c, h, w)
        self.flatten = nn.Flatten()
        self.logits = nn.Linear(in_c * h * w, num_classes)
        self.hidden_layer_names: tuple[str, ...] = ("relu1", "relu2", "relu3")
        if init == "authors":
            for layer in (self.conv1, self.conv2, self.conv3, self.logits):
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.normalize(x)
        h = self.relu1(self.conv1(h))
        h = self.relu2(self.conv2(h))
        h = self.relu3(self.conv3(h))
        return self.logits(self.flatten(h))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU.

    The shortcut is He et al.'s option A (the one used for the CIFAR ResNets
    in the paper): identity, and where the shape changes, subsample by the
    stride and zero-pad the new channels (no parameters). The block's own
    output is its final ReLU's output, so hooking the block module (e.g.
    ``stage2.0``) or its ``relu2`` gives the same tensor.

    >>> BasicBlock(16, 32, stride=2)(torch.zeros(1, 16, 8, 8)).shape
    torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.stride = stride
        self.pad_channels = out_channels - in_channels
        if self.pad_channels < 0:
            raise ValueError("BasicBlock: option-A shortcut cannot reduce channels")

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_channels:
            lo = self.pad_channels // 2
            x = F.pad(x, (0, 0, 0, 0, lo, self.pad_channels - lo))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al. (2016) CIFAR ResNet-20: 3 stages x 3 basic blocks, 16/32/64 channels.

    Stem conv3x3(16)-BN-ReLU (``conv``, ``bn``, ``relu``), stages ``stage1``,
    ``stage2``, ``stage3`` (each an ``nn.Sequential`` of :class:`BasicBlock`,
    the first block of stages 2 and 3 with stride 2), global average pool
    (``pool``), ``flatten``, linear ``logits``. Shortcuts are option A
    (parameter-free), giving 0.27M parameters for 10 classes (269,722), the
    figure in the paper's Table 6. Any number of input channels and any
    spatial size works (the pool is adaptive).

    ``hidden_layer_names = ("relu", "stage1.0", ..., "stage3.2")``: the stem's
    post-ReLU output and each block's output (after the block's final ReLU).

    >>> m = ResNet20((3, 32, 32), 10)
    >>> sum(p.numel() for p in m.parameters())
    269722
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        *,
        mean: Stat = 0.0,
        std: Stat = 1.0,
    ) -> None:
        super().__init__()
        c, _, _ = _check_image_shape(input_shape, "ResNet20")
        _check_classes(num_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.normalize = Normalize(mean, std)
        self.conv = nn.Conv2d(c, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        names = ["relu"]
        in_c = 16
        for s, width in enumerate((16, 32, 64), start=1):
            blocks = []
            for b in range(3):
                stride = 2 if (s > 1 and b == 0) else 1
                blocks.append(BasicBlock(in_c, width, stride))
                in_c = width
                names.append(f"stage{s}.{b}")
            self.add_module(f"stage{s}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.logits = nn.Linear(64, num_classes)
        self.hidden_layer_names: tuple[str, ...] = tuple(names)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.bn(self.conv(self.normalize(x))))
        h = self.stage3(self.stage2(self.stage1(h)))
        return self.logits(self.flatten(self.pool(h)))


class AutoencoderClassifier(nn.Module):
    """Szegedy et al. (2013)'s AE400-10: a one-layer sigmoid autoencoder, softmax on its code.

    ``code = sigmoid(fc1(flatten(normalize(x))))`` (``code_size`` units), logits
    ``= logits(code)``; the decoder ``reconstruction(decoder(code))`` (a sigmoid, so in
    [0, 1] like the inputs) is used only to pre-train the encoder
    (:meth:`reconstruct`), never by ``forward``. Szegedy et al.'s FC models are
    :class:`MLP` (``widths=()`` is softmax regression, ``(100, 100)`` is FC100-100-10).
    Modules: ``normalize``, ``flatten``, ``fc1``, ``code``, ``decoder``,
    ``reconstruction``, ``logits``; ``hidden_layer_names = ("code",)``.

    Shapes: input (N, *input_shape) -> logits (N, num_classes); :meth:`reconstruct`
    returns (N, *input_shape).

    >>> m = AutoencoderClassifier((1, 4, 4), 3, code_size=5)
    >>> x = torch.rand(2, 1, 4, 4)
    >>> m(x).shape, m.reconstruct(x).shape, m.hidden_layer_names
    (torch.Size([2, 3]), torch.Size([2, 1, 4, 4]), ('code',))
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        code_size: int = 400,
        *,
        mean: Stat = 0.0,
        std: Stat = 1.0,
    ) -> None:
        super().__init__()
        shape = _check_shape(input_shape, "AutoencoderClassifier")
        _check_classes(num_classes)
        if int(code_size) < 1:
            raise ValueError(f"AutoencoderClassifier: code_size must be >= 1, got {code_size}")
        d = math.prod(shape)
        self.input_shape = shape
        self.normalize = Normalize(mean, std)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(d, int(code_size))
        self.code = nn.Sigmoid()
        self.decoder = nn.Linear(int(code_size), d)
        self.reconstruction = nn.Sigmoid()
        self.logits = nn.Linear(int(code_size), num_classes)
        self.hidden_layer_names: tuple[str, ...] = ("code",)

    def encode(self, x: Tensor) -> Tensor:
        """The code (N, code_size), each unit in (0, 1)."""
        return self.code(self.fc1(self.flatten(self.normalize(x))))

    def reconstruct(self, x: Tensor) -> Tensor:
        """``sigmoid(decoder(code(x)))`` shaped like ``x`` (in (0, 1), the inputs' range)."""
        return self.reconstruction(self.decoder(self.encode(x))).view_as(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.encode(x))


# ----------------------------------------------------------------------------- GANs


def _check_latent(latent_dim: int, model: str) -> int:
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"{model}: latent_dim must be a positive integer, got {latent_dim!r}")
    return latent_dim


def _check_widths(widths: Sequence[int], model: str) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"{model}: widths must be one or more positive sizes, got {widths}")
    return widths


class MLPGenerator(nn.Module):
    """GAN generator: noise z -> image in [0, 1], [Linear -> BatchNorm -> LeakyReLU(0.2)].

    ``fc1 -> bn1 -> act1 -> ... -> fc{L} -> bn{L} -> act{L} -> fc_out -> output`` (a
    sigmoid, so samples lie in [0, 1] like the data), reshaped to ``output_shape``;
    ``hidden_layer_names = ("act1", ..., "act{L}")``. ``batch_norm=False`` drops the
    ``bn`` modules. Batch norm uses batch statistics in train mode and running ones
    in eval mode.

    Shapes: z (N, latent_dim) -> (N, *output_shape).

    >>> g = MLPGenerator(8, (1, 4, 4), widths=(16,))
    >>> g(torch.randn(3, 8)).shape, g.hidden_layer_names
    (torch.Size([3, 1, 4, 4]), ('act1',))
    """

    def __init__(
        self,
        latent_dim: int = 64,
        output_shape: Sequence[int] = (1, 28, 28),
        widths: Sequence[int] = (256, 512),
        *,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.latent_dim = _check_latent(latent_dim, "MLPGenerator")
        self.output_shape = _check_shape(output_shape, "MLPGenerator")
        widths = _check_widths(widths, "MLPGenerator")
        self._blocks: list[tuple[str, ...]] = []
        d = self.latent_dim
        for i, w in enumerate(widths, start=1):
            self.add_module(f"fc{i}", nn.Linear(d, w))
            names = [f"fc{i}"]
            if batch_norm:
                self.add_module(f"bn{i}", nn.BatchNorm1d(w))
                names.append(f"bn{i}")
            self.add_module(f"act{i}", nn.LeakyReLU(0.2))
            self._blocks.append((*names, f"act{i}"))
            d = w
        self.fc_out = nn.Linear(d, math.prod(self.output_shape))
        self.output = nn.Sigmoid()
        self.hidden_layer_names: tuple[str, ...] = tuple(b[-1] for b in self._blocks)

    def forward(self, z: Tensor) -> Tensor:
        h = z
        for block in self._blocks:
            for name in block:
                h = getattr(self, name)(h)
        return self.output(self.fc_out(h)).view(z.shape[0], *self.output_shape)


class MLPDiscriminator(nn.Module):
    """GAN discriminator: image -> one real-vs-generated logit, [Linear -> LeakyReLU(0.2)].

    ``normalize`` ((x - 0.5) / 0.5: [0, 1] -> [-1, 1]) ``-> flatten -> fc1 -> act1 ->
    ... -> act{L} -> logits`` (one unit); ``hidden_layer_names = ("act1", ...)``.
    No batch norm or dropout: a sample's features do not depend on its batch or on
    a random state.

    Shapes: x (N, *input_shape) -> (N,) logits (> 0: "real").

    >>> d = MLPDiscriminator((1, 4, 4), widths=(16, 8))
    >>> d(torch.rand(3, 1, 4, 4)).shape, d.hidden_layer_names
    (torch.Size([3]), ('act1', 'act2'))
    """

    def __init__(
        self, input_shape: Sequence[int] = (1, 28, 28), widths: Sequence[int] = (512, 256)
    ) -> None:
        super().__init__()
        self.input_shape = _check_shape(input_shape, "MLPDiscriminator")
        widths = _check_widths(widths, "MLPDiscriminator")
        self.normalize = Normalize(0.5, 0.5)
        self.flatten = nn.Flatten()
        self._blocks: list[tuple[str, str]] = []
        d = math.prod(self.input_shape)
        for i, w in enumerate(widths, start=1):
            self.add_module(f"fc{i}", nn.Linear(d, w))
            self.add_module(f"act{i}", nn.LeakyReLU(0.2))
            self._blocks.append((f"fc{i}", f"act{i}"))
            d = w
        self.logits = nn.Linear(d, 1)
        self.hidden_layer_names: tuple[str, ...] = tuple(a for _, a in self._blocks)

    def forward(self, x: Tensor) -> Tensor:
        h = self.flatten(self.normalize(x))
        for fc, act in self._blocks:
            h = getattr(self, act)(getattr(self, fc)(h))
        return self.logits(h).squeeze(1)


def _check_gan_image(shape: Sequence[int], model: str) -> tuple[int, int, int]:
    c, h, w = _check_image_shape(shape, model)
    if h % 4 or w % 4:
        raise ValueError(
            f"{model} halves the image size twice: height and width must be multiples of 4 "
            f"(e.g. 28x28), got {h}x{w}; use the 'mlp' GAN for other sizes"
        )
    return c, h, w


def _dcgan_init(module: nn.Module) -> None:
    """Radford et al. (2016): conv/linear weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """DCGAN-style generator (Radford et al. 2016) for H x W images (H, W multiples of 4).

    ``fc`` (z -> 2c x H/4 x W/4) ``-> bn1 -> act1`` (ReLU) ``-> deconv2`` (4x4, stride 2:
    c x H/2 x W/2) ``-> bn2 -> act2 -> deconv3`` (4x4, stride 2: C x H x W) ``-> output``
    (sigmoid: [0, 1]); c = ``channels``. ``hidden_layer_names = ("act1", "act2")``.
    Batch norm uses batch statistics in train mode and running ones in eval mode.

    Shapes: z (N, latent_dim) -> (N, C, H, W).

    >>> g = DCGANGenerator(8, (1, 28, 28), channels=4)
    >>> g(torch.randn(2, 8)).shape
    torch.Size([2, 1, 28, 28])
    """

    def __init__(
        self, latent_dim: int = 64, output_shape: Sequence[int] = (1, 28, 28), channels: int = 64
    ) -> None:
        super().__init__()
        self.latent_dim = _check_latent(latent_dim, "DCGANGenerator")
        c, h, w = _check_gan_image(output_shape, "DCGANGenerator")
        if int(channels) < 1:
            raise ValueError(f"DCGANGenerator: channels must be >= 1, got {channels}")
        self.output_shape = (c, h, w)
        self._start = (2 * channels, h // 4, w // 4)
        self.fc = nn.Linear(self.latent_dim, math.prod(self._start))
        self.bn1 = nn.BatchNorm1d(math.prod(self._start))
        self.act1 = nn.ReLU()
        self.deconv2 = nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = nn.ReLU()
        self.deconv3 = nn.ConvTranspose2d(channels, c, 4, 2, 1)
        self.output = nn.Sigmoid()
        self.hidden_layer_names: tuple[str, ...] = ("act1", "act2")
        _dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        h = self.act1(self.bn1(self.fc(z))).view(z.shape[0], *self._start)
        h = self.act2(self.bn2(self.deconv2(h)))
        return self.output(self.deconv3(h))


class DCGANDiscriminator(nn.Module):
    """DCGAN-style discriminator for H x W images (H, W multiples of 4), no batch norm.

    ``normalize`` ([0, 1] -> [-1, 1]) ``-> conv1`` (c@4x4, stride 2) ``-> act1``
    (LeakyReLU 0.2) ``-> conv2`` (2c@4x4, stride 2) ``-> act2 -> flatten -> logits``
    (one unit). Without batch norm a sample's features do not depend on its batch.
    ``hidden_layer_names = ("act1", "act2")``.

    Shapes: x (N, C, H, W) -> (N,) logits.

    >>> DCGANDiscriminator((1, 28, 28), channels=4)(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2])
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), channels: int = 64) -> None:
        super().__init__()
        c, h, w = _check_gan_image(input_shape, "DCGANDiscriminator")
        if int(channels) < 1:
            raise ValueError(f"DCGANDiscriminator: channels must be >= 1, got {channels}")
        self.input_shape = (c, h, w)
        self.normalize = Normalize(0.5, 0.5)
        self.conv1 = nn.Conv2d(c, channels, 4, 2, 1)
        self.act1 = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 4, 2, 1)
        self.act2 = nn.LeakyReLU(0.2)
        self.flatten = nn.Flatten()
        self.logits = nn.Linear(2 * channels * (h // 4) * (w // 4), 1)
        self.hidden_layer_names: tuple[str, ...] = ("act1", "act2")
        _dcgan_init(self)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.conv1(self.normalize(x)))
        h = self.act2(self.conv2(h))
        return self.logits(self.flatten(h)).squeeze(1)


#: GAN architectures :func:`build_gan` knows.
GAN_ARCHITECTURES: tuple[str, ...] = ("mlp", "dcgan")


def build_gan(
    arch: str,
    image_shape: Sequence[int],
    *,
    latent_dim: int = 64,
    generator_kwargs: dict[str, object] | None = None,
    discriminator_kwargs: dict[str, object] | None = None,
) -> tuple[nn.Module, nn.Module]:
    """A (generator, discriminator) pair by name: "mlp" or "dcgan" (H, W multiples of 4).

    ``generator_kwargs`` / ``discriminator_kwargs`` go to the classes
    (``widths`` for "mlp", ``channels`` for "dcgan").

    >>> g, d = build_gan("mlp", (1, 8, 8), latent_dim=4, generator_kwargs={"widths": (8,)})
    >>> d(g(torch.randn(5, 4))).shape
    torch.Size([5])
    """
    gk, dk = dict(generator_kwargs or {}), dict(discriminator_kwargs or {})
    if arch == "mlp":
        generator: nn.Module = MLPGenerator(latent_dim, image_shape, **gk)  # type: ignore[arg-type]
        return generator, MLPDiscriminator(image_shape, **dk)  # type: ignore[arg-type]
    if arch == "dcgan":
        generator = DCGANGenerator(latent_dim, image_shape, **gk)  # type: ignore[arg-type]
        return generator, DCGANDiscriminator(image_shape, **dk)  # type: ignore[arg-type]
    raise ValueError(f"unknown GAN architecture {arch!r}; expected one of: mlp, dcgan")


def _mlp(input_shape: Sequence[int], num_classes: int, **kw: object) -> nn.Module:
    return MLP(input_shape, num_classes, **kw)  # type: ignore[arg-type]


def _cnn(input_shape: Sequence[int], num_classes: int, **kw: object) -> nn.Module:
    return ReferenceCNN(input_shape, num_classes, **kw)  # type: ignore[arg-type]


def _resnet20(input_shape: Sequence[int], num_classes: int, **kw: object) -> nn.Module:
    return ResNet20(input_shape, num_classes, **kw)  # type: ignore[arg-type]


def _autoencoder(input_shape: Sequence[int], num_classes: int, **kw: object) -> nn.Module:
    return AutoencoderClassifier(input_shape, num_classes, **kw)  # type: ignore[arg-type]


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet20": _resnet20,
    "autoencoder": _autoencoder,
}


def available_models() -> tuple[str, ...]:
    """Names accepted by :func:`build_model`.

    >>> available_models()
    ('mlp', 'cnn', 'resnet20', 'autoencoder')
    """
    return tuple(_REGISTRY)


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    mean: Stat = 0.0,
    std: Stat = 1.0,
    **kwargs: object,
) -> nn.Module:
    """Build a model by name ("mlp", "cnn", "resnet20", "autoencoder"); kwargs go to its class.

    >>> build_model("cnn", (1, 28, 28), 10, channels=8).feature_shape
    (16, 1, 1)
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(available_models())}"
        ) from None
    return factory(input_shape, num_classes, mean=mean, std=std, **kwargs)
