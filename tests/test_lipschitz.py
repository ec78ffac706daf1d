"""Tests for snnl.lipschitz against full matrices (float64 SVD) and measured ratios."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from snnl.lipschitz import empirical_check, layer_bounds
from snnl.models import MLP, Conv2dSame, Normalize, ReferenceCNN, ResNet20

# tiny problems: one torch thread (see conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def full_matrix(module: nn.Module, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The linear part of module as a matrix: module(e_i) - module(0) for every basis vector."""
    m = copy.deepcopy(module).double().eval()
    n = math.prod(in_shape)
    with torch.no_grad():
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
        cols = m(basis) - m(torch.zeros(1, *in_shape, dtype=torch.float64))
    return cols.reshape(n, -1).T


def top_singular_value(module: nn.Module, in_shape: tuple[int, ...]) -> float:
    return float(torch.linalg.svdvals(full_matrix(module, in_shape))[0])


def single(module: nn.Module, in_shape: tuple[int, ...]) -> float:
    """layer_bounds of a one-layer model."""
    res = layer_bounds(nn.Sequential(module), in_shape)
    assert list(res.bounds) == ["0"]
    return res.bounds["0"]


def test_dense_bounds_are_spectral_norms():
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, widths=(32, 16), mean=0.5, std=[0.25])
    res = layer_bounds(model, (1, 8, 8))
    assert list(res.bounds) == ["normalize", "flatten", "fc1", "relu1", "fc2", "relu2", "logits"]
    for name in ("fc1", "fc2", "logits"):
        w = getattr(model, name).weight.detach().double()
        assert res.bounds[name] == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-12)
        assert res.bounds[name] == pytest.approx(np.linalg.svd(w.numpy())[1][0], rel=1e-12)
    assert res.bounds["normalize"] == pytest.approx(4.0)
    assert res.product == pytest.approx(math.prod(res.bounds.values()), rel=1e-12)
    assert res.cumulative["relu2"] == pytest.approx(
        4.0 * res.bounds["fc1"] * res.bounds["fc2"], rel=1e-12
    )


@pytest.mark.parametrize(
    "conv, in_shape",
    [
        (nn.Conv2d(2, 3, 3, stride=1, padding=0), (2, 7, 6)),
        (nn.Conv2d(2, 3, 3, stride=1, padding=1), (2, 7, 6)),
        (nn.Conv2d(2, 3, 3, stride=2, padding=0), (2, 7, 6)),
        (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 7, 6)),
        (nn.Conv2d(2, 4, 4, stride=2, padding=(1, 2)), (2, 9, 8)),
        (nn.Conv2d(3, 2, 4, padding="same"), (3, 6, 7)),
        (nn.Conv2d(2, 2, 3, padding=2, dilation=2), (2, 6, 6)),
        (nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False), (4, 5, 5)),
        (Conv2dSame(1, 4, 8, stride=2), (1, 8, 8)),
        (Conv2dSame(1, 4, 8, stride=2), (1, 9, 11)),
        (Conv2dSame(2, 3, 6, stride=2), (2, 7, 7)),
        (Conv2dSame(2, 3, 3, stride=1), (2, 6, 6)),
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
def test_conv_bound_is_the_largest_singular_value_of_the_full_matrix(conv, in_shape):
    torch.manual_seed(1)
    nn.init.normal_(conv.weight)
    assert single(conv, in_shape) == pytest.approx(top_singular_value(conv, in_shape), rel=1e-9)


def test_conv_bound_is_not_the_reshaped_kernel_norm():
    """FIELD_NOTES: the norm of the reshaped kernel (spectral_norm) is not a bound."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
    exact = top_singular_value(conv, (1, 10, 10))
    reshaped = float(torch.linalg.matrix_norm(conv.weight.detach().double().reshape(8, -1), 2))
    assert single(conv, (1, 10, 10)) == pytest.approx(exact, rel=1e-9)
    assert exact > 1.5 * reshaped


@pytest.mark.parametrize(
    "pool, in_shape",
    [
        (nn.AvgPool2d(2), (2, 6, 6)),
        (nn.AvgPool2d(3, stride=2, padding=1), (1, 7, 7)),
        (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True), (1, 8, 8)),
        (nn.AdaptiveAvgPool2d(1), (3, 5, 4)),
        (nn.AdaptiveAvgPool2d(2), (1, 5, 7)),
    ],
)
def test_average_pooling_bound_is_its_operator_norm(pool, in_shape):
    assert single(pool, in_shape) == pytest.approx(top_singular_value(pool, in_shape), rel=1e-9)


def test_max_pooling_bound_counts_overlapping_windows():
    assert single(nn.MaxPool2d(2), (1, 6, 6)) == 1.0
    assert single(nn.MaxPool2d(3, stride=1), (1, 7, 7)) == pytest.approx(3.0)
    assert single(nn.MaxPool2d(3, stride=2), (1, 9, 9)) == pytest.approx(2.0)  # 2 x 2 windows
    # the bound is attained: a pixel that is the maximum of its 9 windows moves 9 outputs
    pool = nn.MaxPool2d(3, stride=1)
    x = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    x[0, 0, 3, 3] = 1.0
    r = torch.zeros_like(x)
    r[0, 0, 3, 3] = 1e-3
    ratio = float((pool(x + r) - pool(x)).norm() / r.norm())
    assert ratio == pytest.approx(3.0)


def test_batchnorm_and_normalize_match_their_jacobians():
    torch.manual_seed(2)
    bn = nn.BatchNorm2d(3)
    bn.running_var.uniform_(0.2, 3.0)
    bn.running_mean.normal_()
    bn.weight.data.normal_()
    bn.eval()
    assert single(bn, (3, 4, 4)) == pytest.approx(top_singular_value(bn, (3, 4, 4)), rel=1e-12)
    norm = Normalize([0.1, 0.2, 0.3], [0.5, 0.2, 2.0])
    assert single(norm, (3, 2, 2)) == pytest.approx(5.0)
    assert top_singular_value(norm, (3, 2, 2)) == pytest.approx(5.0)
    with pytest.raises(TypeError, match="running statistics"):
        layer_bounds(nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)), (3, 4, 4))


def _max_slope(act: nn.Module) -> float:
    t = torch.linspace(-12, 12, 2_000_001, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(act(t).sum(), t)
    return float(grad.abs().max())


@pytest.mark.parametrize(
    "act",
    [nn.ReLU(), nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.SiLU(), nn.LeakyReLU(0.2),
     nn.LeakyReLU(-1.5), nn.ELU(2.0), nn.ELU(0.5), nn.Softplus(), nn.ReLU6()],
)  # fmt: skip
def test_activation_constants_are_the_largest_slopes(act):
    bound = single(act, (5,))
    assert bound == pytest.approx(_max_slope(act), rel=1e-7, abs=1e-9) or (
        isinstance(act, nn.Softplus) and bound == 1.0 and _max_slope(act) > 0.99999
    )
    assert single(nn.Sigmoid(), (3,)) == 0.25


def test_resnet_blocks_bound_branch_plus_shortcut():
    torch.manual_seed(3)
    model = ResNet20((3, 8, 8), 10)
    res = layer_bounds(model, (3, 8, 8))
    names = ["normalize", "conv", "bn", "relu"]
    names += [f"stage{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert list(res.bounds) == [*names, "pool", "flatten", "logits"]
    block = model.stage2[0]
    parts = res.components["stage2.0"]
    assert parts["conv1"] == pytest.approx(top_singular_value(block.conv1, (16, 8, 8)), rel=1e-9)
    assert parts["conv2"] == pytest.approx(top_singular_value(block.conv2, (32, 4, 4)), rel=1e-9)
    assert res.bounds["stage2.0"] == pytest.approx(math.prod(parts.values()) + 1.0, rel=1e-12)
    assert res.bounds["pool"] == pytest.approx(1 / math.sqrt(4))  # mean of 2 x 2 values


@pytest.mark.parametrize(
    "model, shape",
    [
        (lambda: MLP((1, 28, 28), 10, widths=(64, 32)), (1, 28, 28)),
        (lambda: ReferenceCNN((1, 28, 28), 10, channels=8), (1, 28, 28)),
        (lambda: ReferenceCNN((1, 8, 8), 10, channels=8), (1, 8, 8)),
        (lambda: ResNet20((3, 8, 8), 10), (3, 8, 8)),
    ],
)
def test_measured_ratios_never_exceed_the_bounds(model, shape):
    torch.manual_seed(4)
    net = model()
    if isinstance(net, ResNet20):  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.3, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
    res = layer_bounds(net, shape)
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(5))
    for eps in (1e-3, 0.3):
        ratios = empirical_check(net, x, eps=eps, trials=4)
        assert list(ratios) == list(res.bounds)
        for name, ratio in ratios.items():
            assert 0 <= ratio <= res.bounds[name] * (1 + 1e-9), (name, ratio, res.bounds[name])
    # end to end: the product bounds the whole network
    net = net.double().eval()
    r = torch.randn(6, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        change = (net(x.double() + 1e-3 * r) - net(x.double())).flatten(1).norm(dim=1)
    assert float((change / (1e-3 * r.flatten(1).norm(dim=1))).max()) <= res.product


def test_linear_layers_attain_their_bound_in_the_measured_direction():
    """The ratio of a linear layer along its top right singular vector is its bound."""
    torch.manual_seed(7)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    bound = single(conv, (2, 7, 7))
    _, _, vh = torch.linalg.svd(full_matrix(conv, (2, 7, 7)))
    v = vh[0].reshape(1, 2, 7, 7)
    m = copy.deepcopy(conv).double()
    with torch.no_grad():
        ratio = float((m(v) - m(torch.zeros_like(v))).norm())
    assert ratio == pytest.approx(bound, rel=1e-9)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc(x)


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(2 * x)


class _Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.fc(x))


def test_unsupported_models_are_refused_clearly():
    with pytest.raises(TypeError, match="cannot bound LayerNorm; supported: Linear, Conv2d"):
        layer_bounds(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), (4,))
    with pytest.raises(ValueError, match="layer '2' is not the output of '1.fc'"):
        layer_bounds(nn.Sequential(nn.ReLU(), _Residual(), nn.ReLU()), (4,))
    with pytest.raises(ValueError, match="model's output is not the output of its last layer"):
        layer_bounds(_Residual(), (4,))
    with pytest.raises(ValueError, match="first layer 'fc' is not the model's input"):
        layer_bounds(_Scaled(), (4,))
    with pytest.raises(ValueError, match="more than once"):
        layer_bounds(_Reused(), (4,))
    with pytest.raises(TypeError, match="padding_mode='reflect'"):
        layer_bounds(
            nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")), (1, 5, 5)
        )
    with pytest.raises(TypeError, match="tanh"):
        layer_bounds(nn.Sequential(nn.GELU(approximate="tanh")), (3,))
    with pytest.raises(ValueError, match="input_shape"):
        layer_bounds(nn.Sequential(nn.ReLU()), (0, 3))


def test_results_are_deterministic_and_serialisable():
    torch.manual_seed(8)
    model = ReferenceCNN((1, 8, 8), 10, channels=4)
    a, b = layer_bounds(model, (1, 8, 8)), layer_bounds(model, (1, 8, 8))
    assert a.bounds == b.bounds
    d = a.to_dict()
    assert d["input_shapes"]["conv1"] == [1, 8, 8] and d["product"] == a.product
