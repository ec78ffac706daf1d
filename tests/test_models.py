"""Tests for snnl.models against hand computations and published figures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snnl.models import (
    MLP,
    Normalize,
    ReferenceCNN,
    ResNet20,
    available_models,
    build_model,
)

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20"])
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_output_shapes(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    kw = {"widths": (16, 8)} if name == "mlp" else {"channels": 4} if name == "cnn" else {}
    model = build_model(name, shape, 7, **kw)
    out = model(torch.rand(3, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_mlp_on_vectors() -> None:
    model = MLP((1, 40), 10)
    assert model(torch.rand(4, 1, 40)).shape == (4, 10)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [
        500,
        500,
        2000,
        10,
    ]


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20"])
def test_hidden_names_exist_and_are_relu_outputs(name: str) -> None:
    model = build_model(name, (3, 32, 32), 10)
    modules = dict(model.named_modules())
    assert len(model.hidden_layer_names) > 0
    assert "logits" in modules and "logits" not in model.hidden_layer_names
    for n in model.hidden_layer_names:
        assert n in modules
        mod = modules[n]
        # either a ReLU or a residual block ending with its own ReLU
        assert isinstance(mod, nn.ReLU) or isinstance(getattr(mod, "relu2", None), nn.ReLU)


def test_mlp_names_and_manual_forward() -> None:
    torch.manual_seed(1)
    model = MLP((2, 3), 4, widths=(5, 6), mean=0.5, std=0.25)
    assert model.hidden_layer_names == ("relu1", "relu2")
    x = torch.rand(7, 2, 3)
    h = ((x - 0.5) / 0.25).reshape(7, 6)
    h = torch.clamp(h @ model.fc1.weight.T + model.fc1.bias, min=0)
    h = torch.clamp(h @ model.fc2.weight.T + model.fc2.bias, min=0)
    expected = h @ model.logits.weight.T + model.logits.bias
    torch.testing.assert_close(model(x), expected)


def test_normalize_hand_computed() -> None:
    norm = Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    x = torch.tensor([0.6, 0.7, 0.9]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = norm(x)
    expected = [(0.6 - 0.1) / 0.5, (0.7 - 0.2) / 0.25, (0.9 - 0.3) / 2.0]
    for c in range(3):
        torch.testing.assert_close(out[:, c], torch.full((2, 2, 2), expected[c]))
    scalar = Normalize(0.5, 0.5)
    torch.testing.assert_close(scalar(torch.tensor([[0.0, 1.0]])), torch.tensor([[-1.0, 1.0]]))
    assert set(dict(norm.named_buffers())) == {"mean", "std"}


def test_normalize_errors() -> None:
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize(0.0, 0.0)
    with pytest.raises(ValueError, match="per-channel"):
        Normalize((0.1, 0.2), (1.0, 1.0))(torch.zeros(1, 3, 2, 2))


def test_cnn_spatial_sizes_match_cleverhans_arithmetic() -> None:
    # SAME stride 2: ceil(28/2) = 14; VALID 6x6/2: (14-6)//2+1 = 5; VALID 5x5/1: 5-5+1 = 1
    model = ReferenceCNN((1, 28, 28), 10)
    assert model.paddings == ("same", "valid", "valid")
    x = torch.rand(2, 1, 28, 28)
    h1 = model.relu1(model.conv1(model.normalize(x)))
    h2 = model.relu2(model.conv2(h1))
    h3 = model.relu3(model.conv3(h2))
    assert h1.shape == (2, 64, 14, 14)
    assert h2.shape == (2, 128, 5, 5)
    assert h3.shape == (2, 128, 1, 1)
    assert model.logits.in_features == 128


def test_cnn_same_padding_matches_tensorflow_split() -> None:
    # TF SAME on 28, k=8, s=2: total pad (14-1)*2+8-28 = 6 -> 3 before, 3 after.
    torch.manual_seed(0)
    model = ReferenceCNN((1, 28, 28), 10, channels=2)
    x = torch.rand(1, 1, 28, 28)
    ref = nn.functional.conv2d(
        nn.functional.pad(x, (3, 3, 3, 3)), model.conv1.weight, model.conv1.bias, stride=2
    )
    torch.testing.assert_close(model.conv1(x), ref)
    # 8x8 input, k=6 s=2 SAME on 4: total pad (2-1)*2+6-4 = 4 -> 2, 2; k=5 s=1 on 2: 4 -> 2, 2
    small = ReferenceCNN((1, 8, 8), 10, channels=2)
    assert small.paddings == ("same", "same", "same")
    assert small.feature_shape == (4, 2, 2)


def test_cnn_rejects_1d_inputs() -> None:
    with pytest.raises(ValueError, match="channels, height, width"):
        ReferenceCNN((40,), 10)
    with pytest.raises(ValueError, match="channels, height, width"):
        build_model("resnet20", (1, 40), 10)


def test_resnet20_parameter_count() -> None:
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters. With option-A
    # shortcuts: stem 3*16*9 + 2*16; stage1 6*(16*16*9 + 2*16);
    # stage2 16*32*9 + 5*32*32*9 + 6*2*32; stage3 32*64*9 + 5*64*64*9 + 6*2*64; fc 64*10+10.
    by_hand = (
        3 * 16 * 9
        + 32
        + 6 * (16 * 16 * 9 + 32)
        + (16 * 32 * 9 + 5 * 32 * 32 * 9 + 6 * 64)
        + (32 * 64 * 9 + 5 * 64 * 64 * 9 + 6 * 128)
        + 650
    )
    model = ResNet20((3, 32, 32), 10)
    n = sum(p.numel() for p in model.parameters())
    assert n == by_hand == 269_722
    assert abs(n - 0.27e6) < 0.005e6


def test_resnet20_block_output_is_hookable_relu_output() -> None:
    torch.manual_seed(0)
    model = ResNet20((1, 8, 8), 10).eval()
    seen: dict[str, torch.Tensor] = {}
    block = model.stage2[0]
    block.register_forward_hook(lambda m, a, o: seen.__setitem__("block", o))
    block.relu2.register_forward_hook(lambda m, a, o: seen.__setitem__("relu", o))
    model(torch.rand(2, 1, 8, 8))
    assert seen["block"] is seen["relu"]
    assert seen["block"].shape == (2, 32, 4, 4)
    assert (seen["block"] >= 0).all()
    assert "stage2.0" in dict(model.named_modules())


def test_resnet_shortcut_is_option_a() -> None:
    block = ResNet20((3, 32, 32), 10).stage2[0]
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).view(2, 16, 4, 4)
    sc = block.shortcut(x)
    assert sc.shape == (2, 32, 2, 2)
    torch.testing.assert_close(sc[:, 8:24], x[:, :, ::2, ::2])
    assert (sc[:, :8] == 0).all() and (sc[:, 24:] == 0).all()


def test_build_model_unknown_name_lists_known() -> None:
    assert available_models() == ("mlp", "cnn", "resnet20", "autoencoder")
    with pytest.raises(ValueError, match="mlp, cnn, resnet20, autoencoder"):
        build_model("vgg", (1, 28, 28), 10)


def test_build_model_passes_normalisation() -> None:
    model = build_model("cnn", (1, 28, 28), 10, mean=0.1307, std=0.3081)
    torch.testing.assert_close(model.normalize.mean, torch.tensor([0.1307]))
    torch.testing.assert_close(model.normalize.std, torch.tensor([0.3081]))


def test_reference_cnn_authors_init() -> None:
    torch.manual_seed(0)
    m = build_model("cnn", (1, 28, 28), 10, mean=0.5, std=0.25, init="authors")
    # He-normal: std sqrt(2 / fan_in) for every weight, zero biases, raw inputs
    for layer in (m.conv1, m.conv2, m.conv3, m.logits):
        fan_in = layer.weight[0].numel()
        assert layer.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0
    torch.testing.assert_close(m.normalize.mean, torch.tensor([0.0]))
    torch.testing.assert_close(m.normalize.std, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="init"):
        build_model("cnn", (1, 28, 28), 10, init="glorot")
