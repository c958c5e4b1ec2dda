"""Checks shared by the kernel tests of both ops (tests/kernels/<op>/test_*.py).

With --import-mode=importlib a test cannot import a sibling module by name: conftest.py loads
this file as the module `kernel_checks`.
"""

import torch


def stat_dtype(dtype):
    """The dtype of the statistics (mean, rstd, logsumexp) for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def assert_near(name, got, want64, tol, floor=0.0):
    """max |got - want64| <= tol * max(1, max |want64|) + floor."""
    assert got.shape == want64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want64.shape)}"
    if got.numel() == 0:
        return
    err = (got.double() - want64).abs().max().item()
    limit = tol * max(1.0, want64.abs().max().item()) + floor
    assert err <= limit, f"{name}: max error {err:.3g} > {limit:.3g}"
