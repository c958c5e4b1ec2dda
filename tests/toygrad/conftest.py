"""Test helpers for toygrad: a reference engine with micrograd's semantics.

`micrograd_ref` is toygrad.micrograd, a deliberately plain re-statement of micrograd's engine and
nn (binary nodes, a closure per node, recursive topological sort): the behaviour toygrad promises
to match. With --import-mode=importlib a conftest cannot be imported by the tests, so it is
served as a fixture.
"""

import types

import pytest
from toygrad import micrograd


@pytest.fixture(scope="session")
def micrograd_ref():
    """A namespace with Value, Neuron, Layer, MLP: micrograd's semantics, written out plainly."""
    return types.SimpleNamespace(Value=micrograd.Value, Neuron=micrograd.Neuron, Layer=micrograd.Layer,
                                 MLP=micrograd.MLP)
