"""Build check of toykernels' CUDA extensions on a machine without a GPU (`make cuda-build-check`).

Runs under .venv-cuda (a CUDA build of torch; see the Makefile). Steps, each timed; every
problem prints one `FAIL <step>: <why>` line, and the script exits 1 when there was any:

  toolkit  the CUDA toolkit and extra include folders toykernels' build uses (_build.find_toolkit)
  build    both extensions through toykernels' own load path (_build.load_extension) for
           TORCH_CUDA_ARCH_LIST (default 8.0;9.0, so no GPU is asked), into the cache; then the
           functions each built module exports
  ops      every op under torch.ops.toykernels with its schema and dispatch keys; each expected
           op must be there
  fake     every fake registration on CUDA FakeTensors, against the real op run on CPU tensors
           of the same shapes and strides: shapes, dtypes and strides must agree (for the
           attention outputs the strides of the CUDA binding's rule, see `_binding_layout`),
           fused-QKV and KV-cache views included
  compile  torch.compile(fullgraph=True) of toygpt's Block on fake tensors with a backend that
           records the graphs (aot_autograd with recording forward/backward compilers): one
           graph, no break, toykernels ops in the forward and in the backward graph
  ptxas    registers, spills, stack and shared memory of every kernel per arch, from
           `nvcc -Xptxas -v` on each csrc/*.cu (they include no torch header) with the build's
           nvcc flags; cached by content, so a second run costs nothing

    python tools/cuda_build_check.py [--arch-list "8.0;9.0"] [--cache DIR] [--steps build,ptxas]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
STEPS = ("toolkit", "build", "ops", "fake", "compile", "ptxas")

# The op names, written out here (not read from the package) so a lost registration fails.
EXPECTED_OPS = ("add_layer_norm_forward", "attention_backward", "attention_forward", "layer_norm_backward", "layer_norm_forward")
# What each extension module exports (the m.def names in csrc/*_bindings.cpp).
EXPECTED_EXPORTS = {
    "layer_norm": ("layer_norm_forward", "add_layer_norm_forward", "layer_norm_backward"),
    "attention": ("attention_forward", "attention_backward"),
}


class Check:
    """Collects failures, one line each, and prints them as they come."""

    def __init__(self):
        self.failures: list[str] = []

    def fail(self, step: str, why: str) -> None:
        line = f"FAIL {step}: {why}"
        self.failures.append(line)
        print(line, flush=True)


# ----------------------------------------------------------------------------------------------
# toolkit and build


def step_toolkit(check: Check, args) -> None:
    from toykernels import _build

    try:
        toolkit = _build.find_toolkit()
    except _build.ToolkitNotFound as error:
        check.fail("toolkit", str(error))
        return
    print(f"  {toolkit.describe()}")
    if toolkit.missing_headers:
        check.fail("toolkit", f"headers found neither in {toolkit.cuda_home}/include nor in torch's "
                              f"nvidia-* packages: {', '.join(toolkit.missing_headers)}")  # fmt: skip


def step_build(check: Check, args) -> None:
    from toykernels import _build, backend

    for op, sources in sorted(backend._sources.items()):
        try:
            module, seconds, how = _build.load_extension(op, sources)
        except _build.BuildError as error:
            check.fail("build", f"{op}: {error}")
            continue
        print(f"  {op}: {how} in {seconds:.1f} s: {module.__file__}")
        expected = EXPECTED_EXPORTS.get(op)
        if expected is None:
            check.fail("build", f"{op}: no expected exports listed in {Path(__file__).name} (EXPECTED_EXPORTS)")
            continue
        missing = [name for name in expected if not callable(getattr(module, name, None))]
        if missing:
            check.fail("build", f"{op}: {module.__file__} does not export {', '.join(missing)}")


# ----------------------------------------------------------------------------------------------
# ops: the registrations


def _dispatch_keys(qualname: str) -> list[str]:
    """The dispatch keys that have a kernel for the op (`torch._C._dispatch_dump`'s lines)."""

    keys = []
    for line in torch._C._dispatch_dump(qualname).splitlines():
        key, _, rest = line.partition(": ")
        if "registered at" in rest and key not in ("debug", "schema", "name"):
            keys.append(key)
    return keys


def step_ops(check: Check, args) -> None:
    import toykernels  # noqa: F401  (registers the ops)

    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("toykernels::"))
    for qualname in names:
        short = qualname.split("::", 1)[1].split(".")[0]
        schema = getattr(torch.ops.toykernels, short).default._schema
        print(f"  {schema}\n      kernels for: {', '.join(_dispatch_keys(qualname)) or 'none'}")
    present = {n.split("::", 1)[1].split(".")[0] for n in names}
    for op in EXPECTED_OPS:
        if op not in present:
            check.fail("ops", f"toykernels::{op} is not registered (torch.ops.toykernels has {sorted(present)})")


# ----------------------------------------------------------------------------------------------
# fake: the fake registrations against the real ops


@dataclass
class FakeCase:
    op: str  # name under torch.ops.toykernels
    label: str
    build: object  # build(device) -> args; random values, the same shapes and strides on any device
    follows: dict  # output index -> input index whose layout the CUDA binding's output follows


def _binding_layout(like) -> tuple[int, ...]:
    """The strides of the output the attention binding allocates for input `like`
    (attention_bindings.cpp, empty_output): at::empty_like(like), or contiguous where the
    kernels cannot address that layout (head dim stride != 1, or a row start not 16-byte
    aligned). ATen's empty_like runs here on a CPU tensor with like's strides."""

    out = torch.empty_like(like)
    addressable = (out.shape[3] <= 1 or out.stride(3) == 1) and all(
        out.shape[d] <= 1 or out.stride(d) * out.element_size() % 16 == 0 for d in range(3)
    )
    return out.stride() if addressable else torch.empty(like.shape, dtype=like.dtype).stride()


# The builders below make one case's arguments on `device`: the same shapes, strides and dtypes
# on any device (values are random; the fake ops ignore them). Odd sizes on purpose.
B, H, T, D = 2, 3, 17, 64  # attention: batch, heads, keys, head dim
C = H * D


def _ln(device, dtype):
    x = torch.randn(3, 5, 257, device=device, dtype=dtype)
    return (x, torch.randn(257, device=device, dtype=dtype), torch.randn(257, device=device, dtype=dtype), 1e-5)


def _ln_transposed_fp32_weight(device, dtype):
    x = torch.randn(5, 3, 96, device=device, dtype=dtype).transpose(0, 1)  # (3, 5, 96), not contiguous
    return (x, torch.randn(96, device=device), None, 1e-5)


def _ln_no_params(device, dtype):
    return (torch.randn(4, 96, device=device, dtype=dtype), None, None, 1e-5)


def _add_ln(device, dtype):
    x, residual = (torch.randn(2, 7, 96, device=device, dtype=dtype) for _ in range(2))
    return (x, residual, torch.randn(96, device=device, dtype=dtype), torch.randn(96, device=device, dtype=dtype), 1e-5)


def _ln_bwd(device, dtype, with_params=True):
    x = torch.randn(3, 5, 257, device=device, dtype=dtype)
    weight = torch.randn(257, device=device) if with_params else None  # fp32 master weight
    _, mean, rstd = torch.ops.toykernels.layer_norm_forward(x, weight, None, 1e-5)
    return (torch.randn_like(x), x, weight, mean, rstd, with_params)


def _qkv_contiguous(device, dtype, head_dim=D):
    return tuple(torch.randn(B, H, T, head_dim, device=device, dtype=dtype) for _ in range(3))


def _qkv_fused_split(device, dtype):
    # toygpt's CausalSelfAttention: c_attn(x) (B, T, 3C) split into q, k, v, each (B, nh, T, hs)
    qkv = torch.randn(B, T, 3 * C, device=device, dtype=dtype)
    return tuple(t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(C, dim=2))


def _qkv_fused_5d(device, dtype):
    # q, k, v as views into one (B, T, 3, H, D) tensor, each transposed to (B, H, T, D)
    qkv = torch.randn(B, T, 3, H, D, device=device, dtype=dtype)
    return tuple(t.transpose(1, 2) for t in qkv.unbind(2))


def _qkv_kv_cache(device, dtype):
    # 5 new queries after 12 cached positions: k, v narrowed out of (B, H, 32, D) buffers
    q = torch.randn(B, H, 5, D, device=device, dtype=dtype)
    k_buf, v_buf = (torch.randn(B, H, 32, D, device=device, dtype=dtype) for _ in range(2))
    return (q, k_buf.narrow(2, 0, T), v_buf.narrow(2, 0, T))


def _attn_fwd(device, dtype, make_qkv):
    q, k, v = make_qkv(device, dtype)
    return (q, k, v, q.shape[-1] ** -0.5)


def _attn_bwd(device, dtype, make_qkv):
    q, k, v = make_qkv(device, dtype)
    scale = q.shape[-1] ** -0.5
    out, lse = torch.ops.toykernels.attention_forward(q, k, v, scale)
    # dout as autograd hands it over in the model: the gradient of out.transpose(1, 2)
    dout = torch.randn(q.shape[0], q.shape[2], q.shape[1], q.shape[3], device=device, dtype=dtype)
    return (dout.transpose(1, 2), q, k, v, out, lse, scale)


def _fake_cases() -> list[FakeCase]:
    cases = []
    qkv_layouts = [
        (f"contiguous ({B}, {H}, {T}, {D})", _qkv_contiguous),
        ("fused QKV split (B, T, 3C)", _qkv_fused_split),
        ("fused QKV (B, T, 3, H, D)", _qkv_fused_5d),
        ("KV cache, Tq 5 < Tk 17", _qkv_kv_cache),
        ("head dim 32", functools.partial(_qkv_contiguous, head_dim=32)),
    ]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        cases += [
            FakeCase("layer_norm_forward", f"{name} (3, 5, 257)", functools.partial(_ln, dtype=dtype), {}),
            FakeCase("layer_norm_forward", f"{name} transposed (3, 5, 96), fp32 weight",
                     functools.partial(_ln_transposed_fp32_weight, dtype=dtype), {}),  # fmt: skip
            FakeCase("layer_norm_forward", f"{name} (4, 96), no weight or bias", functools.partial(_ln_no_params, dtype=dtype), {}),
            FakeCase("add_layer_norm_forward", f"{name} (2, 7, 96)", functools.partial(_add_ln, dtype=dtype), {}),
            FakeCase("layer_norm_backward", f"{name} (3, 5, 257), fp32 weight", functools.partial(_ln_bwd, dtype=dtype), {}),
            FakeCase("layer_norm_backward", f"{name} (3, 5, 257), no weight or bias",
                     functools.partial(_ln_bwd, dtype=dtype, with_params=False), {}),  # fmt: skip
        ]
        for label, make_qkv in qkv_layouts:
            # the attention outputs follow an input's layout on CUDA: out -> q; dq, dk, dv -> q, k, v
            cases.append(FakeCase("attention_forward", f"{name} {label}",
                                  functools.partial(_attn_fwd, dtype=dtype, make_qkv=make_qkv), {0: 0}))  # fmt: skip
            cases.append(FakeCase("attention_backward", f"{name} {label}",
                                  functools.partial(_attn_bwd, dtype=dtype, make_qkv=make_qkv), {0: 1, 1: 2, 2: 3}))  # fmt: skip
    return cases


def _describe(t) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} strides {t.stride()}"


def step_fake(check: Check, args) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    cases = _fake_cases()
    covered = {case.op for case in cases}
    registered = sorted(n.split("::", 1)[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                        if n.startswith("toykernels::"))  # fmt: skip
    for op in registered:
        if op not in covered:
            check.fail("fake", f"toykernels::{op} has no fake-check case in {Path(__file__).name}: add one")
    passed = 0
    for case in cases:
        op = getattr(torch.ops.toykernels, case.op)
        try:
            with FakeTensorMode():
                fake_out = op(*case.build("cuda"))
            torch.manual_seed(0)
            real_args = case.build("cpu")
            real_out = op(*real_args)
        except Exception as error:  # one line per case, and go on with the others
            check.fail("fake", f"{case.op} {case.label}: {type(error).__name__}: {str(error).splitlines()[0]}")
            continue
        problems = []
        for i, (fake, real) in enumerate(zip(fake_out, real_out)):
            if fake.device.type != "cuda":
                problems.append(f"output {i} is on {fake.device}, not cuda")
            want = _binding_layout(real_args[case.follows[i]]) if i in case.follows else real.stride()
            if (fake.shape, fake.dtype, fake.stride()) != (real.shape, real.dtype, want):
                rule = "; strides by the CUDA binding's empty_like rule" if i in case.follows else ""
                problems.append(f"output {i}: fake {_describe(fake)}, expected {tuple(real.shape)} "
                                f"{str(real.dtype).removeprefix('torch.')} strides {want} (the real op on CPU{rule})")  # fmt: skip
        if len(fake_out) != len(real_out):
            problems.append(f"fake returns {len(fake_out)} outputs, the real op {len(real_out)}")
        for problem in problems:
            check.fail("fake", f"{case.op} {case.label}: {problem}")
        passed += not problems
    print(f"  {passed}/{len(cases)} cases: fake (CUDA) outputs match the real op's shapes, dtypes and strides")


# ----------------------------------------------------------------------------------------------
# compile: a GPT block under torch.compile(fullgraph=True)


def _toykernels_ops(gm) -> set[str]:
    return {str(node.target).split(".")[1] for node in gm.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("toykernels.")}  # fmt: skip


def _trace_block(device: str, train: bool) -> dict:
    """torch.compile(fullgraph=True) of toygpt's Block on fake `device` tensors; returns the
    graphs its recording backend saw: dynamo's, and aot_autograd's forward, backward and
    inference graphs (the compilers record each graph and run it as it is, on fake tensors)."""
    from torch._functorch.aot_autograd import aot_module_simplified, make_boxed_func
    from torch._subclasses.fake_tensor import FakeTensorMode
    from toygpt.model import Block, GPTConfig

    graphs = {"dynamo": [], "forward": [], "backward": [], "inference": []}

    def recorder(kind):
        def compiler(gm, example_inputs):
            graphs[kind].append(gm)
            return make_boxed_func(gm.forward)  # aot_autograd calls compiled graphs with a list

        return compiler

    def backend(gm, example_inputs):
        graphs["dynamo"].append(gm)
        return aot_module_simplified(gm, example_inputs, fw_compiler=recorder("forward"),
                                     bw_compiler=recorder("backward"), inference_compiler=recorder("inference"))  # fmt: skip

    torch._dynamo.reset()
    config = GPTConfig(block_size=64, vocab_size=64, n_layer=1, n_head=2, n_embd=128, dropout=0.0)
    with FakeTensorMode(), torch.device(device):
        block = Block(config).train(train)
        x = torch.randn(2, 17, config.n_embd, requires_grad=train)  # T = 17: not a tile multiple
        compiled = torch.compile(block, backend=backend, fullgraph=True)
        with torch.set_grad_enabled(train):
            out = compiled(x)
        if tuple(out.shape) != tuple(x.shape) or out.device.type != device:
            raise AssertionError(f"Block returned {tuple(out.shape)} on {out.device}, expected {tuple(x.shape)} on {device}")
        if train:
            out.sum().backward()  # runs the backward graph: aot_autograd compiles it on first use
            missing = [n for n, p in [("x", x), *block.named_parameters()] if p.grad is None]
            if missing:
                raise AssertionError(f"no gradient for {', '.join(missing)}")
    return graphs


def step_compile(check: Check, args) -> None:
    expect_forward = {"layer_norm_forward", "attention_forward", "add_layer_norm_forward"}
    expect_backward = {"layer_norm_backward", "attention_backward"}

    def verify(what: str, graphs: dict, kinds: dict) -> None:
        if len(graphs["dynamo"]) != 1:
            check.fail("compile", f"{what}: {len(graphs['dynamo'])} dynamo graphs, expected 1 (a graph break)")
        for kind, expected in kinds.items():
            if len(graphs[kind]) != 1:
                check.fail("compile", f"{what}: {len(graphs[kind])} {kind} graphs, expected 1")
                continue
            found = _toykernels_ops(graphs[kind][0])
            print(f"  {what}, {kind} graph: {len(graphs[kind][0].graph.nodes)} nodes, toykernels ops {sorted(found)}")
            if not expected <= found:
                check.fail("compile", f"{what}: the {kind} graph lacks {sorted(expected - found)}")

    # forward, no grad, on fake CUDA tensors: the path a GPU run takes
    try:
        verify("CUDA forward", _trace_block("cuda", train=False), {"inference": expect_forward})
    except Exception as error:
        check.fail("compile", f"CUDA forward: {type(error).__name__}: {_first_line(error)}")

    # forward and backward: on fake CUDA tensors where the autograd engine allows it
    try:
        graphs = _trace_block("cuda", train=True)
        what = "CUDA forward+backward"
    except Exception as error:
        if "hasPrimaryContext" not in str(error):
            check.fail("compile", f"CUDA forward+backward: {type(error).__name__}: {_first_line(error)}")
            return
        # NOTE: without a GPU, torch's autograd engine refuses CUDA tensors, fake ones included:
        # GraphTask::stash_current_streams asks the driver about device 0 (hasPrimaryContext).
        # So the backward is traced on fake CPU tensors with TOYKERNELS_BACKEND=cuda, which
        # sends them down the same custom-op path as CUDA tensors (backend.native_path).
        print("  no GPU: the autograd engine refuses CUDA tensors (hasPrimaryContext), so the "
              "backward is traced on fake CPU tensors through the custom ops (TOYKERNELS_BACKEND=cuda)")  # fmt: skip
        previous = os.environ.get("TOYKERNELS_BACKEND")
        os.environ["TOYKERNELS_BACKEND"] = "cuda"
        try:
            graphs = _trace_block("cpu", train=True)
            what = "custom-op forward+backward (CPU)"
        except Exception as error2:
            check.fail("compile", f"forward+backward: {type(error2).__name__}: {_first_line(error2)}")
            return
        finally:
            if previous is None:
                os.environ.pop("TOYKERNELS_BACKEND", None)
            else:
                os.environ["TOYKERNELS_BACKEND"] = previous
    verify(what, graphs, {"forward": expect_forward, "backward": expect_backward})


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


# ----------------------------------------------------------------------------------------------
# ptxas: registers and spills


@dataclass
class KernelResources:
    kernel: str  # mangled name
    arch: str  # sm_80
    registers: int = 0
    spill_stores: int = 0  # bytes
    spill_loads: int = 0  # bytes
    stack: int = 0  # bytes of stack frame
    smem: int = 0  # bytes of static shared memory


def parse_ptxas(text: str) -> list[KernelResources]:
    """The entry functions in `nvcc -Xptxas -v` output, one per (kernel, arch).

    ptxas prints, per entry function:
        ptxas info    : Compiling entry function '_Z...' for 'sm_80'
        ptxas info    : Function properties for _Z...
            8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
        ptxas info    : Used 255 registers, used 1 barriers, 5120 bytes smem, 432 bytes cmem[0]
    (smem only when the kernel has static shared memory). Properties of non-entry functions
    are printed too and are ignored.
    """
    kernels: list[KernelResources] = []
    current: KernelResources | None = None
    properties_of: str | None = None
    for line in text.splitlines():
        if match := re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line):
            current = KernelResources(match.group(1), match.group(2))
            kernels.append(current)
            properties_of = None
        elif match := re.search(r"Function properties for (\S+)", line):
            properties_of = match.group(1)
        elif match := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            if current is not None and properties_of == current.kernel:
                current.stack, current.spill_stores, current.spill_loads = (int(g) for g in match.groups())
        elif match := re.search(r"Used (\d+) registers", line):
            if current is not None:
                current.registers = int(match.group(1))
                smem = re.search(r"(\d+) bytes smem", line)
                current.smem = int(smem.group(1)) if smem else 0
    return kernels


def demangle(names: list[str], toolkit_bin: Path | None = None) -> dict[str, str]:
    """Mangled -> readable, via the toolkit's cu++filt, else c++filt (CUDA kernels use the
    Itanium C++ ABI's mangling), else the names as they are."""
    tool = None
    if toolkit_bin is not None and (toolkit_bin / "cu++filt").is_file():
        tool = str(toolkit_bin / "cu++filt")
    tool = tool or shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None or not names:
        return {n: n for n in names}
    result = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True)
    readable = result.stdout.splitlines()
    if result.returncode != 0 or len(readable) != len(names):
        return {n: n for n in names}
    return dict(zip(names, readable))


def short_kernel_name(demangled: str) -> str:
    """'void toykernels::(anonymous namespace)::layer_norm_fwd<__nv_bfloat16, 8>(Args<...>)'
    -> 'layer_norm_fwd<bf16, 8>': no return type, namespaces or parameter list."""
    name = demangled.removeprefix("void ")
    depth = 0
    for i, ch in enumerate(name):  # cut the parameter list: the first '(' outside <...>
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not name.startswith("(anonymous", i):
            name = name[:i]
            break
    name = name.replace("(anonymous namespace)::", "").replace("toykernels::", "")
    return name.replace("__nv_bfloat16", "bf16").replace("__half", "fp16")


def _ptxas_flags(cache: Path) -> list[str]:
    """The nvcc flags of the extension build for a .cu file (without arch flags).

    The C++ standard is read from the build's build.ninja where one exists (cpp_extension adds
    its own when none is given), else c++17 is used.
    """
    from torch.utils import cpp_extension
    from toykernels import _build

    std = "-std=c++17"
    for ninja in sorted(cache.glob("toykernels_*/*/build.ninja")):
        match = re.search(r"^cuda_cflags = .*?(-std=\S+)", ninja.read_text(), re.MULTILINE)
        if match:
            std = match.group(1)
            break
    return [*cpp_extension.COMMON_NVCC_FLAGS, *_build.NVCC_FLAGS, std, "-I", str(_build.CSRC)]


def step_ptxas(check: Check, args) -> None:
    from toykernels import _build

    try:
        toolkit = _build.find_toolkit()
    except _build.ToolkitNotFound as error:
        check.fail("ptxas", str(error))
        return
    arches = [p.replace(".", "").removesuffix("+PTX") for p in re.split(r"[;\s]+", args.arch_list.strip()) if p]
    flags = _ptxas_flags(args.cache)
    headers = b"".join(p.read_bytes() for pattern in ("*.h", "*.cuh") for p in sorted(_build.CSRC.glob(pattern)))
    out_dir = args.cache / "ptxas"
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for source in sorted(_build.CSRC.glob("*.cu")):
        for arch in arches:
            key = hashlib.sha256(b"\0".join([toolkit.version.encode(), " ".join(flags).encode(), arch.encode(),
                                             source.read_bytes(), headers])).hexdigest()[:16]  # fmt: skip
            jobs.append((source, arch, out_dir / f"{source.stem}-sm_{arch}-{key}.txt"))
    todo = [job for job in jobs if not job[2].is_file()]
    print(f"  {len(jobs) - len(todo)} of {len(jobs)} compiles cached; compiling {len(todo)} with {toolkit.nvcc}")
    max_jobs = os.cpu_count() or 1  # nvcc is single-threaded here: one job per core
    with tempfile.TemporaryDirectory() as tmp:
        running = []
        for source, arch, log in todo:
            if len(running) >= max_jobs:
                _finish(running.pop(0), check)
            cmd = [str(toolkit.nvcc), *flags, "-gencode", f"arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
                   "-c", str(source), "-o", str(Path(tmp) / f"{source.stem}-{arch}.o")]  # fmt: skip
            process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running.append((source, arch, log, process))
        for job in running:
            _finish(job, check)
    rows = []
    for source, _, log in jobs:
        if log.is_file():
            rows += [(source.name, k) for k in parse_ptxas(log.read_text())]
    if not rows:
        return
    print_ptxas_table(rows, toolkit.nvcc.parent)


def _finish(job, check: Check) -> None:
    source, arch, log, process = job
    output, _ = process.communicate()
    if process.returncode != 0:
        from toykernels import _build

        check.fail("ptxas", f"nvcc for sm_{arch} failed on {source.name}: {_build.first_error_line(output)}")
        return
    if not parse_ptxas(output):
        check.fail("ptxas", f"{source.name} sm_{arch}: no ptxas report in nvcc's output")
        return
    log.write_text(output)


def print_ptxas_table(rows: list[tuple[str, KernelResources]], toolkit_bin: Path | None) -> None:
    names = demangle(sorted({k.kernel for _, k in rows}), toolkit_bin)
    table = sorted(((file, short_kernel_name(names[k.kernel]), k) for file, k in rows), key=lambda r: (r[0], r[1], r[2].arch))
    width = max(len(name) for _, name, _ in table)
    print(f"  {'file':<13} {'kernel':<{width}}  arch   regs  spill st  spill ld  stack  smem")
    for file, name, k in table:
        mark = "  <- spills" if k.spill_stores or k.spill_loads else ""
        print(f"  {file:<13} {name:<{width}}  {k.arch:<5} {k.registers:>5} {k.spill_stores:>8} B"
              f" {k.spill_loads:>7} B {k.stack:>5} B {k.smem:>5} B{mark}")  # fmt: skip
    for arch in sorted({k.arch for _, _, k in table}):
        spilling = [f"{name} ({k.spill_stores} B stores, {k.spill_loads} B loads)"
                    for _, name, k in table if k.arch == arch and (k.spill_stores or k.spill_loads)]  # fmt: skip
        count = sum(k.arch == arch for _, _, k in table)
        print(f"  {arch}: {count} kernels, {len(spilling)} spill{': ' + '; '.join(spilling) if spilling else ''}")


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch-list", default="8.0;9.0", help="TORCH_CUDA_ARCH_LIST to build for (default 8.0;9.0)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="build cache (default: $TOYKERNELS_CACHE, else .toykernels-cache in the repo)")  # fmt: skip
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    args.cache = (args.cache or Path(os.environ.get("TOYKERNELS_CACHE") or REPO / ".toykernels-cache")).resolve()
    os.environ["TOYKERNELS_CACHE"] = str(args.cache)  # load_extension builds there
    os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch_list  # and for these archs, asking no GPU

    start = time.perf_counter()
    print(f"# cuda_build_check: torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"TORCH_CUDA_ARCH_LIST={args.arch_list}, cache {args.cache}", flush=True)  # fmt: skip
    check = Check()
    functions = {"toolkit": step_toolkit, "build": step_build, "ops": step_ops, "fake": step_fake,
                 "compile": step_compile, "ptxas": step_ptxas}  # fmt: skip
    for step in steps:
        print(f"== {step}", flush=True)
        before = len(check.failures)
        step_start = time.perf_counter()
        try:
            functions[step](check, args)
        except Exception as error:  # a crash in a step is one failure, and the next step runs
            check.fail(step, f"{type(error).__name__}: {_first_line(error)}")
        took = time.perf_counter() - step_start
        status = "ok" if len(check.failures) == before else f"{len(check.failures) - before} failure(s)"
        print(f"== {step}: {status} in {took:.1f} s", flush=True)
    print(f"# {len(check.failures)} failure(s) in {time.perf_counter() - start:.1f} s")
    for line in check.failures:
        print(line)
    return 1 if check.failures else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
