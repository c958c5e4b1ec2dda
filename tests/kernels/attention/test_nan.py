"""NaN in, NaN out: every CPU path of causal attention gives NaN where the reference formulas do.

PyTorch's CPU attention returns a row of zeros where every score of the row is NaN (a NaN in the
query's row, in every key the row sees, or a NaN scale); a NaN must not come out as a plausible 0.
"""

import math

import pytest
import torch
from toykernels.attention import attention_forward, causal_attention
from toykernels.reference import attention_forward_ref

PATHS = {
    "causal_attention": lambda q, k, v, scale: causal_attention(q, k, v, scale),
    "attention_forward": lambda q, k, v, scale: attention_forward(q, k, v, scale)[0],
    "custom op": lambda q, k, v, scale: torch.ops.toykernels.attention_forward(q, k, v, scale)[0],
}


def poisoned(case, Tq, Tk, dtype=torch.float32, D=16):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, Tq, D, dtype=dtype), torch.randn(2, 3, Tk, D, dtype=dtype), torch.randn(2, 3, Tk, D, dtype=dtype)
    scale = 1 / math.sqrt(D)
    if case == "nan q row":
        q[1, 2, Tq - 1] = float("nan")  # the last query row: every shape has one
    elif case == "one nan in a q row":
        q[0, 1, 0, 3] = float("nan")
    elif case == "nan key 0":
        k[0, 0, 0] = float("nan")  # every row sees key 0; the first rows see nothing else
    elif case == "nan keys everywhere":
        k[1, 1] = float("nan")
    elif case == "nan scale":
        scale = float("nan")
    elif case == "inf scale":
        scale = float("inf")
    return q, k, v, scale


CASES = ["nan q row", "one nan in a q row", "nan key 0", "nan keys everywhere", "nan scale", "inf scale"]


@pytest.mark.parametrize("Tq,Tk", [(7, 7), (1, 9), (4, 11)])  # is_causal, no mask, explicit mask
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", sorted(PATHS))
def test_nan_rows_are_nan_on_every_cpu_path(path, case, Tq, Tk):
    q, k, v, scale = poisoned(case, Tq, Tk)
    expected, _ = attention_forward_ref(q, k, v, scale)
    out = PATHS[path](q, k, v, scale)
    nan_rows = torch.isnan(expected).any(-1)
    assert nan_rows.any(), "the case must poison some row"
    assert torch.equal(torch.isnan(out).any(-1), nan_rows)
    torch.testing.assert_close(out[~nan_rows], expected[~nan_rows], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["nan q row", "nan key 0"])
def test_nan_rows_are_nan_with_grad_and_under_bf16_autocast(case):
    q, k, v, scale = poisoned(case, 6, 6)
    expected = torch.isnan(attention_forward_ref(q, k, v, scale)[0]).any(-1)
    out = causal_attention(q.requires_grad_(), k, v, scale)
    assert torch.equal(torch.isnan(out).any(-1), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_attention(q, k, v, scale)
    assert torch.equal(torch.isnan(out.float()).any(-1), expected)


def test_the_raw_backward_is_nan_where_the_forward_is():
    q, k, v, scale = poisoned("nan q row", 5, 5)
    out, lse = attention_forward(q, k, v, scale)
    assert torch.isnan(lse[1, 2, -1])  # the backward recomputes P from lse: NaN there too
    dq, dk, dv = torch.ops.toykernels.attention_backward(torch.ones_like(out), q, k, v, out, lse, scale)
    assert torch.isnan(dq[1, 2, -1]).all()


def test_nan_rows_are_nan_under_torch_compile_fullgraph():
    q, k, v, scale = poisoned("nan q row", 6, 6)
    compiled = torch.compile(causal_attention, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v, scale)
    assert torch.equal(torch.isnan(out).any(-1), torch.isnan(attention_forward_ref(q, k, v, scale)[0]).any(-1))


def test_finite_inputs_with_a_zero_output_row_stay_zero():
    """A row of zeros is only the sign of a NaN row: zero values give zeros, not NaN."""
    q, k, _, scale = poisoned("none", 5, 5)
    v = torch.zeros_like(k)
    assert torch.equal(causal_attention(q, k, v, scale), torch.zeros_like(q))
    assert torch.equal(attention_forward(q, k, v, scale)[0], torch.zeros_like(q))
