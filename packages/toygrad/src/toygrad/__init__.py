"""toygrad: automatic differentiation from first principles.

The core (engine, nn, losses, optim, datasets) is pure Python with no dependency. `toygrad.viz`
needs matplotlib / graphviz (imported when used); `toygrad.tensor` needs torch and is not
imported here, so `import toygrad` never pulls it in.
"""

from toygrad.engine import Value, add_n, dot, logsumexp
from toygrad.nn import MLP, Layer, Linear, Module, Neuron

__version__ = "0.1.0"

__all__ = ["Value", "dot", "add_n", "logsumexp", "Module", "Neuron", "Layer", "MLP", "Linear"]
