"""toygrad.nn: micrograd's API and numbers, the torch-style Module/Linear API, bad input."""

import random

import pytest
from toygrad.engine import Value
from toygrad.nn import MLP, Layer, Linear, Module, Neuron


def micrograd_demo_loss(model, X, y, value_cls):
    # micrograd's demo.ipynb loss, written as it is there (builtin sum, -yi*scorei, reg on p*p).
    inputs = [list(map(value_cls, xrow)) for xrow in X]
    scores = list(map(model, inputs))
    losses = [(1 + -yi * scorei).relu() for yi, scorei in zip(y, scores)]
    data_loss = sum(losses) * (1.0 / len(losses))
    alpha = 1e-4
    reg_loss = alpha * sum(p * p for p in model.parameters())
    total_loss = data_loss + reg_loss
    accuracy = [(yi > 0) == (scorei.data > 0) for yi, scorei in zip(y, scores)]
    return total_loss, sum(accuracy) / len(accuracy)


def test_micrograd_demo_training_loop_gives_micrograd_numbers(micrograd_ref):
    rng = random.Random(5)
    X = [[rng.uniform(-1.5, 2.5), rng.uniform(-1, 1.5)] for _ in range(20)]
    y = [1 if x1 * x1 - x2 > 0.3 else -1 for x1, x2 in X]
    runs = {}
    for name, mlp_cls, value_cls in (("toygrad", MLP, Value), ("ref", micrograd_ref.MLP, micrograd_ref.Value)):
        random.seed(1337)
        model = mlp_cls(2, [16, 16, 1])
        history = []
        for k in range(5):
            total_loss, acc = micrograd_demo_loss(model, X, y, value_cls)
            model.zero_grad()
            total_loss.backward()
            learning_rate = 1.0 - 0.9 * k / 100
            for p in model.parameters():
                p.data -= learning_rate * p.grad
            history.append((total_loss.data, acc))
        runs[name] = (history, [p.data for p in model.parameters()])
    (hist, params), (ref_hist, ref_params) = runs["toygrad"], runs["ref"]
    assert len(params) == len(ref_params) == 337
    # Forward sums are bit-identical; gradients may be summed in another order (1 ulp).
    assert hist[0] == ref_hist[0]
    for (loss, acc), (ref_loss, ref_acc) in zip(hist, ref_hist):
        assert loss == pytest.approx(ref_loss, rel=1e-9) and acc == ref_acc
    assert params == pytest.approx(ref_params, rel=1e-9, abs=1e-12)


def test_micrograd_readme_nn_usage_and_reprs(micrograd_ref):
    random.seed(0)
    n = Neuron(2)
    random.seed(0)
    ref = micrograd_ref.Neuron(2)
    x = [Value(1.0), Value(-2.0)]
    out = n(x)
    assert out.data == ref([micrograd_ref.Value(1.0), micrograd_ref.Value(-2.0)]).data
    assert [p.data for p in n.parameters()] == [p.data for p in ref.parameters()]
    assert repr(n) == "ReLUNeuron(2)"
    assert repr(Neuron(3, nonlin=False)) == "LinearNeuron(3)"
    assert repr(Layer(2, 2)) == "Layer of [ReLUNeuron(2), ReLUNeuron(2)]"
    assert repr(MLP(2, [3, 1])) == (
        "MLP of [Layer of [ReLUNeuron(2), ReLUNeuron(2), ReLUNeuron(2)], Layer of [LinearNeuron(3)]]"
    )
    assert isinstance(Layer(3, 1)([1.0, 2.0, 3.0]), Value)  # nout == 1: a Value, not a list
    assert len(Layer(3, 4)([1.0, 2.0, 3.0])) == 4
    layer = Layer(3, 2, nonlin=False)
    assert all(not n.nonlin for n in layer.neurons)


def test_zero_grad_and_parameters_order():
    model = MLP(3, [4, 2])
    assert len(model.parameters()) == (3 + 1) * 4 + (4 + 1) * 2
    assert model.parameters()[:4] == model.layers[0].neurons[0].w + [model.layers[0].neurons[0].b][:1]
    out = model([1.0, -1.0, 0.5])
    (out[0] * out[1] + out[0]).backward()
    model.zero_grad()
    assert all(p.grad == 0 for p in model.parameters())


class ThreeLayerModel(Module):
    # A user's model written against torch.nn's interface (Module, Linear, forward), unchanged.
    def __init__(self, input_features, output_features):
        super().__init__()
        self.layer1 = Linear(input_features, 8)
        self.layer2 = Linear(8, 4)
        self.output = Linear(4, output_features)

    def forward(self, X):
        X = self.layer1(X)
        X = [xi.relu() for xi in X]
        X = self.layer2(X)
        X = [xi.relu() for xi in X]
        return self.output(X)


def test_a_torch_style_model_runs_and_matches_torch():
    torch = pytest.importorskip("torch")
    random.seed(3)
    model = ThreeLayerModel(3, 2)
    params = model.parameters()
    assert len(params) == (3 * 8 + 8) + (8 * 4 + 4) + (4 * 2 + 2)
    x = [0.5, -1.25, 2.0]
    out = model(x)
    assert isinstance(out, list) and len(out) == 2
    (out[0] * out[1]).backward()

    # The same network in torch float64 with the same weights.
    def linear(lin):
        t = torch.nn.Linear(lin.in_features, lin.out_features).double()
        with torch.no_grad():
            t.weight.copy_(torch.tensor([[w.data for w in row] for row in lin.weight], dtype=torch.float64))
            t.bias.copy_(torch.tensor([b.data for b in lin.bias], dtype=torch.float64))
        return t

    l1, l2, l3 = linear(model.layer1), linear(model.layer2), linear(model.output)
    y = l3(torch.relu(l2(torch.relu(l1(torch.tensor(x, dtype=torch.float64))))))
    assert [v.data for v in out] == pytest.approx(y.tolist(), rel=1e-12)
    (y[0] * y[1]).backward()
    for ours, theirs in ((model.layer1, l1), (model.layer2, l2), (model.output, l3)):
        grads = [w.grad for row in ours.weight for w in row]
        assert grads == pytest.approx(theirs.weight.grad.flatten().tolist(), rel=1e-9, abs=1e-12)
        assert [b.grad for b in ours.bias] == pytest.approx(theirs.bias.grad.tolist(), rel=1e-9, abs=1e-12)


def test_parameters_are_found_in_attributes_lists_and_dicts_once():
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.blocks = [Linear(2, 2), Linear(2, 2)]
            self.heads = {"a": Linear(2, 1)}
            self.scale = Value(1.0)
            self.shared = self.blocks[0]  # the same module twice: its parameters count once
            self.name = "not a parameter"

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return self.heads["a"](x)[0] * self.scale

    net = Net()
    assert len(net.parameters()) == 6 + 6 + 3 + 1
    assert len({id(p) for p in net.parameters()}) == len(net.parameters())
    net([1.0, 2.0]).backward()
    assert net.scale.grad != 0


def test_module_without_forward_says_so():
    class Empty(Module):
        pass

    with pytest.raises(NotImplementedError, match="Empty must define forward"):
        Empty()([1.0])


def test_wrong_number_of_inputs_is_a_value_error():
    with pytest.raises(ValueError, match="expects 3 inputs, got 2"):
        Linear(3, 2)([1.0, 2.0])
    with pytest.raises(ValueError, match="expects 2 inputs, got 3"):
        MLP(2, [4, 1])([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="in_features must be a positive int, got 0"):
        Linear(0, 2)
