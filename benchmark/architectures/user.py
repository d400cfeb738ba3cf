"""The user's own model class: ``architectures = ["mypkg.models:MyVAE"]`` in a grid.

Any importable class, built as ``MyVAE(image_shape=(C, H, W), latent_dim=d,
posterior_params=P, **options)`` (options from the grid's ``[architecture_options]``), with

- ``encode(x (B, C, H, W) in [0, 1]) -> (mu (B, d), params (B, P))`` — P is what the
  objective needs beyond the mean (d log-variances for the β-VAE, 0 for GRAE/AE, the Cholesky
  entries of a block-diagonal covariance);
- ``decode(z (B, d)) -> (B, C, H, W)`` — one unconstrained output per pixel value, which the
  likelihood interprets (Bernoulli: logits; Gaussian: the mean through a sigmoid).

:func:`check_user_class` builds one model and runs both methods on a batch of two images
when the grid is read, so an import error, a missing method, a wrong output shape or a
parameter that is not floating point is one line before anything trains. Each run records
the class's import path, its options and the sha256 of its source file (:func:`source_sha256`);
a resumed run whose source has changed since is refused.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rdbench.io import InputError


def import_class(path: str) -> type:
    """The class named by ``"package.module:Class"``; one line for anything that fails."""
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name or not class_name.isidentifier():
        raise InputError(f"architecture {path!r}: a user model is named \"package.module:Class\"")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`: modules beside the grid's user
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, SyntaxError, whatever the module raises on import
        raise InputError(f"architecture {path!r}: cannot import {module_name} "
                         f"({type(e).__name__}: {_first_line(e)})") from None
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls) or not issubclass(cls, nn.Module):
        raise InputError(f"architecture {path!r}: {module_name} has no torch.nn.Module class "
                         f"{class_name}")
    for method in ("encode", "decode"):
        if not callable(getattr(cls, method, None)):
            raise InputError(f"architecture {path!r}: {class_name} has no {method}() method "
                             "(a model needs encode(x) -> (mu, params) and decode(z))")
    return cls


def source_sha256(path: str) -> str:
    """sha256 of the source file that defines the class ``path`` (what a resume checks)."""
    cls = import_class(path)
    try:
        source = Path(inspect.getfile(cls))
        return hashlib.sha256(source.read_bytes()).hexdigest()
    except (TypeError, OSError) as e:
        raise InputError(f"architecture {path!r}: cannot read the class's source file "
                         f"({_first_line(e)})") from None


def build_user_net(path: str, image_shape: tuple[int, int, int], latent_dim: int,
                   posterior_params: int, options: dict[str, Any]) -> nn.Module:
    cls = import_class(path)
    try:
        return cls(image_shape=tuple(image_shape), latent_dim=latent_dim,
                   posterior_params=posterior_params, **options)
    except Exception as e:
        raise InputError(f"architecture {path!r}: {cls.__name__}(image_shape=, latent_dim=, "
                         f"posterior_params=, **options) failed ({type(e).__name__}: "
                         f"{_first_line(e)})") from None


def check_user_net(path: str, net: nn.Module, image_shape: tuple[int, int, int],
                   latent_dim: int, posterior_params: int) -> None:
    """Run encode and decode on two images; one line for any output of the wrong shape."""
    bad = [name for name, p in net.named_parameters() if not p.is_floating_point()]
    if bad:
        raise InputError(f"architecture {path!r}: parameter {bad[0]} is not floating point")
    x = torch.rand(2, *image_shape)
    was = net.training
    net.eval()  # no BatchNorm statistics updated, no dropout: the model is left as built
    try:
        with torch.no_grad():
            out = net.encode(x)
            mu, params = out if isinstance(out, tuple) and len(out) == 2 else (None, None)
            if not isinstance(mu, torch.Tensor) or not isinstance(params, torch.Tensor):
                raise InputError(f"architecture {path!r}: encode(x) must return a pair of "
                                 "tensors (mu, params)")
            _expect(path, "encode(x)[0] (mu)", mu, (2, latent_dim))
            _expect(path, "encode(x)[1] (params)", params, (2, posterior_params))
            _expect(path, "decode(z)", net.decode(torch.randn(2, latent_dim)),
                    (2, *image_shape))
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"architecture {path!r}: running encode/decode on a batch of 2 failed "
                         f"({type(e).__name__}: {_first_line(e)})") from None
    finally:
        net.train(was)


def _expect(path: str, what: str, t: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape) \
            or not t.is_floating_point():
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"architecture {path!r}: {what} must be a float tensor of shape "
                         f"{tuple(shape)}, got {got}")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
