"""Test helpers for toygrad: the reference engine, karpathy/micrograd itself.

`micrograd_ref` is micrograd as published on PyPI (`micrograd==0.1.0`, a dev tool the Makefile
installs): binary nodes, a closure per node, a recursive topological sort, the behaviour toygrad
promises to match. With --import-mode=importlib a conftest cannot be imported by the tests, so
it is served as a fixture.
"""

import types

import pytest


@pytest.fixture(scope="session")
def micrograd_ref():
    """A namespace with Value, Neuron, Layer, MLP: karpathy/micrograd's engine and nn."""
    engine = pytest.importorskip("micrograd.engine", reason="micrograd (pip install micrograd==0.1.0) is the reference")
    nn = pytest.importorskip("micrograd.nn")
    return types.SimpleNamespace(Value=engine.Value, Neuron=nn.Neuron, Layer=nn.Layer, MLP=nn.MLP)
