"""The one device resolver every command uses."""

import pytest
import torch

from rdbench.device import resolve_device
from rdbench.io import InputError


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "", "gpu0"])
def test_malformed_names_are_input_errors(name):
    with pytest.raises(InputError):
        resolve_device(name)


def test_missing_cuda_device_is_an_input_error():
    name = f"cuda:{torch.cuda.device_count()}"  # one past the last device (or any, without CUDA)
    with pytest.raises(InputError, match="cuda"):
        resolve_device(name)
