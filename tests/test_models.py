"""Architectures of SPEC §3: shapes, layer lists, parameter counts (by hand), MACs."""

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


@pytest.mark.parametrize("arch", ARCHITECTURES)
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


def test_relu_not_on_outputs():
    for arch in ARCHITECTURES:
        model = build_model(arch)
        assert not isinstance(model.encoder[-1], torch.nn.ReLU)
        last = [m for m in model.decoder if m.__class__.__name__ != "Unflatten"][-1]
        assert not isinstance(last, torch.nn.ReLU)


def test_unknown_architecture_is_input_error():
    with pytest.raises(InputError, match="mlp1"):
        build_model("resnet")


def test_bench_lists_the_same_architectures():
    assert bench.ARCHITECTURES == ARCHITECTURES
