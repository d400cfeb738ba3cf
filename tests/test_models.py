"""Architectures of SPEC §3 and §10: shapes, layer lists, parameter counts (by hand), MACs,
any image shape, Kumar & Poole's networks, the likelihood as part of the model."""

import pytest
import torch

from benchmark import bench
from benchmark.models import ARCHITECTURES, build_model, count_parameters, describe, forward_macs
from rdbench.io import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(n_in, n_out):
    return n_in * n_out + n_out


def _conv(c_in, c_out, k=4):
    return c_in * c_out * k * k + c_out


# Parameter counts written out from the SPEC's layer lists (d = 10, 20 encoder outputs).
EXPECTED_PARAMS = {
    "mlp1": _linear(3072, 512) + _linear(512, 20) + _linear(10, 512) + _linear(512, 3072),
    "mlp3": _linear(3072, 512)
    + 2 * _linear(512, 512)
    + _linear(512, 20)
    + _linear(10, 512)
    + 2 * _linear(512, 512)
    + _linear(512, 3072),
    "cnn1": _conv(3, 64) + _linear(64 * 16 * 16, 20) + _linear(10, 64 * 16 * 16) + _conv(64, 3),
    "cnn3": _conv(3, 64)
    + 2 * _conv(64, 64)
    + _linear(64 * 4 * 4, 20)
    + _linear(10, 64 * 4 * 4)
    + 2 * _conv(64, 64)
    + _conv(64, 3),
}


@pytest.mark.parametrize("arch", list(EXPECTED_PARAMS))
def test_shapes_and_parameter_counts(arch):
    model = build_model(arch)
    x = torch.rand(5, 3, 32, 32)
    mu, params = model.encode(x)
    assert mu.shape == (5, 10) and params.shape == (5, 10)
    assert model.decode(mu).shape == (5, 3, 32, 32)
    assert count_parameters(model) == EXPECTED_PARAMS[arch]
    assert sum(r["params"] for r in describe(model)) == EXPECTED_PARAMS[arch]


def test_posterior_params_sets_encoder_width():
    assert build_model("cnn3", posterior_params=0).encode(torch.rand(2, 3, 32, 32))[1].shape == (
        2,
        0,
    )
    mu, p = build_model("mlp1", latent_dim=4, posterior_params=6).encode(torch.rand(2, 3, 32, 32))
    assert mu.shape == (2, 4) and p.shape == (2, 6)


def test_cnn3_feature_maps_halve():
    rows = [r for r in describe(build_model("cnn3")) if r["layer"].startswith("Conv")]
    assert [r["output"] for r in rows] == [
        (64, 16, 16),
        (64, 8, 8),
        (64, 4, 4),
        (64, 8, 8),
        (64, 16, 16),
        (3, 32, 32),
    ]


def test_forward_macs_known_answers():
    assert forward_macs("mlp1") == 3072 * 512 + 512 * 20 + 10 * 512 + 512 * 3072
    # conv: out pixels × Cin k²; transposed conv: in pixels × Cout k²
    assert forward_macs("cnn1") == (
        64 * 16 * 16 * 3 * 16 + 16384 * 20 + 10 * 16384 + 64 * 16 * 16 * 3 * 16
    )


def test_no_activation_on_outputs():
    for arch in ARCHITECTURES:
        model = build_model(arch)
        assert isinstance(model.encoder[-1], torch.nn.Linear)
        last = [m for m in model.decoder if m.__class__.__name__ not in ("Unflatten", "Crop")][-1]
        assert isinstance(last, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d))


def test_unknown_architecture_is_input_error():
    with pytest.raises(InputError, match="mlp1"):
        build_model("resnet")


def test_bench_lists_the_papers_architectures():
    assert set(bench.ARCHITECTURES) <= set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64), (1, 8, 8), (3, 30, 17)])
def test_every_architecture_takes_any_image_shape(arch, shape):
    model = build_model(arch, image_shape=shape, options={"width": 0.1} if arch[:2] == "kp"
                        else {})
    x = torch.rand(3, *shape)
    mu, params = model.encode(x)
    assert mu.shape == params.shape == (3, 10)
    assert model.decode(mu).shape == x.shape


def test_cnn_pads_sides_2_to_the_depth_does_not_divide_and_crops_back():
    """28×28 with cnn3: padded to 32×32 (2 zeros each side), 4×4 at the bottleneck."""
    model = build_model("cnn3", image_shape=(1, 28, 28))
    rows = describe(model, (1, 28, 28))
    assert rows[0]["layer"] == "ZeroPad2d((2, 2, 2, 2))" and rows[0]["output"] == (1, 32, 32)
    assert [r["output"] for r in rows if r["layer"].startswith("Conv2d")][-1] == (64, 4, 4)
    assert rows[-1]["output"] == (1, 28, 28) and rows[-2]["output"] == (1, 32, 32)
    # a side that divides gets no extra layer: 32×32 models are SPEC §3's (same state dict keys)
    assert not any("Pad" in r["layer"] or "Crop" in r["layer"] for r in describe(build_model(
        "cnn3")))


def test_kp_mnist_layer_list_follows_their_appendix_d():
    """Channels 64-128-256-512-512 (kernel 4, strides 1 2 2 2 1), BatchNorm + ELU after every
    convolution, FC to 7×7×256, decoder 512-256-128-64 then one channel at 28×28."""
    rows = describe(build_model("kp-mnist", image_shape=(1, 28, 28), latent_dim=8), (1, 28, 28))
    convs = [r for r in rows if r["part"] == "encoder" and r["layer"].startswith("Conv2d")]
    assert [r["output"] for r in convs] == [(64, 28, 28), (128, 14, 14), (256, 7, 7),
                                           (512, 4, 4), (512, 4, 4)]
    kinds = [r["layer"].split("(")[0] for r in rows]
    assert kinds.count("BatchNorm2d") == 5 + 3 and kinds.count("BatchNorm1d") == 1
    assert kinds.count("ELU") == 5 + 5 and "ReLU" not in kinds
    dec = [r for r in rows if r["part"] == "decoder"]
    assert dec[0]["output"] == (7 * 7 * 256,)
    assert [r["output"][0] for r in dec if r["layer"].startswith("ConvTranspose2d")] == [
        512, 256, 128, 64]
    assert dec[-1]["output"] == (1, 28, 28) and dec[-1]["layer"].startswith("Conv2d(64, 1")


def test_activation_and_width_options():
    elu = build_model("mlp1", activation="elu", options={"hidden": 16})
    assert isinstance(elu.encoder[2], torch.nn.ELU) and elu.encoder[1].out_features == 16
    with pytest.raises(InputError, match="no option 'depth'"):
        build_model("mlp1", options={"depth": 2})
    with pytest.raises(InputError, match="unknown activation"):
        build_model("mlp1", activation="tanh")


def test_learned_decoder_std_is_a_parameter_of_the_model():
    model = build_model("mlp1", likelihood="gaussian", decoder_std="learned")
    assert "likelihood.log_std" in dict(model.named_parameters())
    fixed = build_model("mlp1", likelihood="gaussian", decoder_std=0.1)
    assert set(fixed.state_dict()) == set(build_model("mlp1").state_dict())
