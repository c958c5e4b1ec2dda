// Torch binding of the causal-attention launchers (attention.h): checks every tensor (device,
// dtype, shape) with a message naming the argument, allocates the outputs, and calls the
// launchers on the current CUDA stream. Inputs may be strided views (attention.py passes them
// as they are): the kernels take each tensor's B, H and T strides, and only a tensor they
// cannot address in place (D stride != 1, or a row start that is not 16-byte aligned) is
// copied to a contiguous one here.

#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <limits>

#include "attention.h"
#include "torch_checks.h"

namespace {

using toykernels::DType;

constexpr const char* kOp = "attention";

#define CHECK_ARG(cond, name, ...) TOYKERNELS_CHECK_ARG(kOp, cond, name, __VA_ARGS__)

DType dtype_of(const at::Tensor& t) { return toykernels::kernel_dtype_of<DType>(t, kOp, "q"); }

// True when the kernels can address t (B, H, T, D) in place: unit stride along D, and every row
// start 16-byte aligned (the kernels move rows in 16-byte chunks): the data pointer and the
// B, H and T strides in bytes are multiples of 16. A dimension of size 1 is never stepped
// along, so its stride does not matter.
bool kernel_addressable(const at::Tensor& t) {
  if (t.stride(3) != 1 && t.size(3) > 1) return false;
  if (reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int d = 0; d < 3; ++d) {
    if (t.size(d) > 1 && (t.stride(d) * static_cast<int64_t>(t.element_size())) % 16 != 0) return false;
  }
  return true;
}

toykernels::AttnStrides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// A (B, H, T, D) CUDA tensor on q's device with q's dtype (q itself: ref == nullptr), as it is
// when the kernels can address it in place, else a contiguous copy.
at::Tensor checked(const at::Tensor& t, const char* name, const at::Tensor* ref) {
  CHECK_ARG(t.defined(), name, "is undefined");
  CHECK_ARG(t.is_cuda(), name, "must be a CUDA tensor, got one on ", t.device());
  CHECK_ARG(t.dim() == 4, name, "must have shape (B, H, T, D), got ", t.sizes());
  if (ref != nullptr) {
    CHECK_ARG(t.device() == ref->device(), name, "is on ", t.device(), " but q is on ", ref->device());
    CHECK_ARG(t.scalar_type() == ref->scalar_type(), name, "has dtype ", t.scalar_type(), " but q has ",
              ref->scalar_type());
    CHECK_ARG(t.size(0) == ref->size(0) && t.size(1) == ref->size(1) && t.size(3) == ref->size(3), name,
              "has shape ", t.sizes(), " but q has ", ref->sizes(), " (B, H and D must agree)");
  }
  if (!kernel_addressable(t)) return t.clone(at::MemoryFormat::Contiguous);
  return t;
}

// An output like `like` (an input as the caller passed it): at::empty_like follows the memory
// order of like's strides (q transposed out of a fused (B, T, 3 * H * D) or (B, T, H * D)
// projection gives an output laid out as (B, T, H, D), which the model's transpose back to
// (B, T, C) then views without a copy), and is contiguous for an overlapping input. Where
// that layout has D stride != 1 the kernels cannot write it: contiguous instead. The fake
// registrations in attention.py (_empty_output) apply the same rule, so both agree on strides.
at::Tensor empty_output(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like);
  if (!kernel_addressable(out)) out = at::empty(like.sizes(), like.options(), at::MemoryFormat::Contiguous);
  return out;
}

struct Problem {
  int64_t B, H;
  int Tq, Tk, D;
};

Problem check_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  CHECK_ARG(k.sizes() == v.sizes(), "v", "has shape ", v.sizes(), " but k has ", k.sizes());
  const int64_t Tq = q.size(2), Tk = k.size(2), D = q.size(3);
  CHECK_ARG(Tq >= 1 && Tq <= Tk, "q", "has length ", Tq, " but k has ", Tk, "; need 1 <= Tq <= Tk");
  CHECK_ARG(Tk <= std::numeric_limits<int>::max(), "k", "is too long: ", Tk);
  CHECK_ARG(toykernels::attention_head_dim_supported(static_cast<int>(D)), "q", "has head dim ", D,
            "; the kernel supports 32, 64 and 128");
  const int64_t B = q.size(0), H = q.size(1), BH = B * H;
  CHECK_ARG(BH >= 1 && BH <= 65535, "q", "has B * H = ", BH, "; the kernel supports 1 to 65535");
  return {B, H, static_cast<int>(Tq), static_cast<int>(Tk), static_cast<int>(D)};
}

void check_launch(cudaError_t err, const char* what) { toykernels::check_launch(err, kOp, what); }

std::vector<at::Tensor> attention_forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                          const at::Tensor& v_in, double scale) {
  const at::Tensor q = checked(q_in, "q", nullptr);
  const at::Tensor k = checked(k_in, "k", &q);
  const at::Tensor v = checked(v_in, "v", &q);
  const Problem p = check_problem(q, k, v);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = empty_output(q_in);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  check_launch(toykernels::attention_forward(dtype_of(q), q.data_ptr(), strides_of(q), k.data_ptr(),
                                             strides_of(k), v.data_ptr(), strides_of(v), out.data_ptr(),
                                             strides_of(out), lse.data_ptr<float>(), p.B, p.H, p.Tq, p.Tk,
                                             p.D, static_cast<float>(scale),
                                             at::cuda::getCurrentCUDAStream()),
               "attention_forward");
  return {out, lse};
}

std::vector<at::Tensor> attention_backward(const at::Tensor& dout_in, const at::Tensor& q_in,
                                           const at::Tensor& k_in, const at::Tensor& v_in,
                                           const at::Tensor& out_in, const at::Tensor& lse_in,
                                           double scale) {
  const at::Tensor q = checked(q_in, "q", nullptr);
  const at::Tensor k = checked(k_in, "k", &q);
  const at::Tensor v = checked(v_in, "v", &q);
  const at::Tensor out = checked(out_in, "out", &q);
  const at::Tensor dout = checked(dout_in, "dout", &q);
  const Problem p = check_problem(q, k, v);
  CHECK_ARG(out.sizes() == q.sizes(), "out", "has shape ", out.sizes(), " but q has ", q.sizes());
  CHECK_ARG(dout.sizes() == q.sizes(), "dout", "has shape ", dout.sizes(), " but q has ", q.sizes());
  CHECK_ARG(lse_in.is_cuda() && lse_in.device() == q.device(), "lse", "must be on ", q.device(), ", got ",
            lse_in.device());
  CHECK_ARG(lse_in.scalar_type() == at::kFloat, "lse", "must be float32, got ", lse_in.scalar_type());
  CHECK_ARG(lse_in.dim() == 3 && lse_in.size(0) == q.size(0) && lse_in.size(1) == q.size(1) &&
                lse_in.size(2) == q.size(2),
            "lse", "must have shape (B, H, Tq) = (", q.size(0), ", ", q.size(1), ", ", q.size(2), "), got ",
            lse_in.sizes());
  const at::Tensor lse = lse_in.contiguous();
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = empty_output(q_in), dk = empty_output(k_in), dv = empty_output(v_in);
  at::Tensor delta = at::empty_like(lse);  // rowsum(dout * out), fp32 scratch (contiguous, like lse)
  check_launch(toykernels::attention_backward(
                   dtype_of(q), dout.data_ptr(), strides_of(dout), q.data_ptr(), strides_of(q),
                   k.data_ptr(), strides_of(k), v.data_ptr(), strides_of(v), out.data_ptr(), strides_of(out),
                   lse.data_ptr<float>(), delta.data_ptr<float>(), dq.data_ptr(), strides_of(dq),
                   dk.data_ptr(), strides_of(dk), dv.data_ptr(), strides_of(dv), p.B, p.H, p.Tq, p.Tk, p.D,
                   static_cast<float>(scale), at::cuda::getCurrentCUDAStream()),
               "attention_backward");
  return {dq, dk, dv};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "toykernels fused causal attention (FlashAttention-2 style), see attention.h";
  m.def("attention_forward", &attention_forward, "(q, k, v, scale) -> [out, lse]", py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("scale"));
  m.def("attention_backward", &attention_backward, "(dout, q, k, v, out, lse, scale) -> [dq, dk, dv]",
        py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
        py::arg("scale"));
}
