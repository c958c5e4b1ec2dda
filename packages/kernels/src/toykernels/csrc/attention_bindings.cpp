// Torch binding of the causal-attention launchers (attention.h): checks every tensor (device,
// dtype, shape, contiguity) with a message naming the argument, allocates the outputs, and
// calls the launchers on the current CUDA stream. attention.py has made the inputs contiguous.

#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <limits>

#include "attention.h"

namespace {

using toykernels::AttnDType;

#define CHECK_ARG(cond, name, ...) TORCH_CHECK(cond, "toykernels attention: ", name, " ", __VA_ARGS__)

AttnDType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return AttnDType::Float32;
    case at::kHalf: return AttnDType::Float16;
    case at::kBFloat16: return AttnDType::BFloat16;
    default: CHECK_ARG(false, "q", "has dtype ", t.scalar_type(), "; expected float32, float16 or bfloat16");
  }
  return AttnDType::Float32;  // unreachable
}

// A (B, H, T, D) CUDA tensor, contiguous, on q's device with q's dtype (q itself: ref == nullptr).
// The kernels read 16-byte chunks: a tensor whose data is not 16-byte aligned is copied.
at::Tensor checked(const at::Tensor& t, const char* name, const at::Tensor* ref) {
  CHECK_ARG(t.defined(), name, "is undefined");
  CHECK_ARG(t.is_cuda(), name, "must be a CUDA tensor, got one on ", t.device());
  CHECK_ARG(t.dim() == 4, name, "must have shape (B, H, T, D), got ", t.sizes());
  CHECK_ARG(t.is_contiguous(), name, "must be contiguous");
  if (ref != nullptr) {
    CHECK_ARG(t.device() == ref->device(), name, "is on ", t.device(), " but q is on ", ref->device());
    CHECK_ARG(t.scalar_type() == ref->scalar_type(), name, "has dtype ", t.scalar_type(), " but q has ",
              ref->scalar_type());
    CHECK_ARG(t.size(0) == ref->size(0) && t.size(1) == ref->size(1) && t.size(3) == ref->size(3), name,
              "has shape ", t.sizes(), " but q has ", ref->sizes(), " (B, H and D must agree)");
  }
  if (reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 != 0) return t.clone();
  return t;
}

struct Problem {
  int64_t BH;
  int Tq, Tk, D;
};

Problem check_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  CHECK_ARG(k.sizes() == v.sizes(), "v", "has shape ", v.sizes(), " but k has ", k.sizes());
  const int64_t Tq = q.size(2), Tk = k.size(2), D = q.size(3);
  CHECK_ARG(Tq >= 1 && Tq <= Tk, "q", "has length ", Tq, " but k has ", Tk, "; need 1 <= Tq <= Tk");
  CHECK_ARG(Tk <= std::numeric_limits<int>::max(), "k", "is too long: ", Tk);
  CHECK_ARG(toykernels::attention_head_dim_supported(static_cast<int>(D)), "q", "has head dim ", D,
            "; the kernel supports 32, 64 and 128");
  const int64_t BH = q.size(0) * q.size(1);
  CHECK_ARG(BH >= 1 && BH <= 65535, "q", "has B * H = ", BH, "; the kernel supports 1 to 65535");
  return {BH, static_cast<int>(Tq), static_cast<int>(Tk), static_cast<int>(D)};
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "toykernels attention: ", what, " failed: ", cudaGetErrorString(err));
}

std::vector<at::Tensor> attention_forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                          const at::Tensor& v_in, double scale) {
  const at::Tensor q = checked(q_in, "q", nullptr);
  const at::Tensor k = checked(k_in, "k", &q);
  const at::Tensor v = checked(v_in, "v", &q);
  const Problem p = check_problem(q, k, v);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  check_launch(toykernels::attention_forward(dtype_of(q), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                             out.data_ptr(), lse.data_ptr<float>(), p.BH, p.Tq, p.Tk,
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
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  at::Tensor delta = at::empty_like(lse);  // rowsum(dout * out), fp32 scratch
  check_launch(toykernels::attention_backward(
                   dtype_of(q), dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                   lse.data_ptr<float>(), delta.data_ptr<float>(), dq.data_ptr(), dk.data_ptr(),
                   dv.data_ptr(), p.BH, p.Tq, p.Tk, p.D, static_cast<float>(scale),
                   at::cuda::getCurrentCUDAStream()),
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
