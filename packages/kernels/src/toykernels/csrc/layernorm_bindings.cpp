// Torch binding of the LayerNorm launchers (layernorm.h): checks every tensor (device, dtype,
// shape, contiguity) with a message naming the argument, allocates the outputs, and calls
// the launchers on the current CUDA stream. The Python side (layernorm.py) has already
// flattened x to (rows, C) and made it contiguous.

#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "layernorm.h"
#include "torch_checks.h"

namespace {

using toykernels::DType;

constexpr const char* kOp = "layer_norm";

#define CHECK_ARG(cond, name, ...) TOYKERNELS_CHECK_ARG(kOp, cond, name, __VA_ARGS__)

DType dtype_of(const at::Tensor& t, const char* name) { return toykernels::kernel_dtype_of<DType>(t, kOp, name); }

// A (rows, C) CUDA tensor, contiguous, on x's device (x itself: ref == nullptr).
void check_rows(const at::Tensor& t, const char* name, const at::Tensor* ref) {
  CHECK_ARG(t.defined(), name, "is undefined");
  CHECK_ARG(t.is_cuda(), name, "must be a CUDA tensor, got one on ", t.device());
  CHECK_ARG(t.dim() == 2, name, "must be 2-d (rows, C), got shape ", t.sizes());
  CHECK_ARG(t.is_contiguous(), name, "must be contiguous");
  if (ref != nullptr) {
    CHECK_ARG(t.device() == ref->device(), name, "is on ", t.device(), " but x is on ", ref->device());
    CHECK_ARG(t.sizes() == ref->sizes(), name, "has shape ", t.sizes(), " but x has ", ref->sizes());
    CHECK_ARG(t.scalar_type() == ref->scalar_type(), name, "has dtype ", t.scalar_type(),
              " but x has ", ref->scalar_type());
  }
  const int64_t C = t.size(1);
  CHECK_ARG(C >= 1 && C <= toykernels::kLayerNormMaxWidth, name, "has row width ", C,
            "; the kernel takes 1 to ", toykernels::kLayerNormMaxWidth);
}

// weight / bias: optional, (C,), on x's device, x's dtype or fp32; returned as contiguous fp32.
c10::optional<at::Tensor> param_as_float(const c10::optional<at::Tensor>& p, const char* name,
                                         const at::Tensor& x) {
  if (!p.has_value() || !p->defined()) return c10::nullopt;
  CHECK_ARG(p->device() == x.device(), name, "is on ", p->device(), " but x is on ", x.device());
  CHECK_ARG(p->dim() == 1 && p->size(0) == x.size(1), name, "has shape ", p->sizes(),
            " but x's last dimension is ", x.size(1));
  CHECK_ARG(p->scalar_type() == x.scalar_type() || p->scalar_type() == at::kFloat, name,
            "has dtype ", p->scalar_type(), "; expected x's dtype (", x.scalar_type(), ") or float32");
  return p->to(at::kFloat).contiguous();
}

// (rows,) fp32 statistics from the forward.
void check_stats(const at::Tensor& t, const char* name, const at::Tensor& x) {
  CHECK_ARG(t.is_cuda() && t.device() == x.device(), name, "must be on ", x.device(), ", got ", t.device());
  CHECK_ARG(t.scalar_type() == at::kFloat, name, "must be float32, got ", t.scalar_type());
  CHECK_ARG(t.dim() == 1 && t.size(0) == x.size(0), name, "must have shape (", x.size(0), ",), got ", t.sizes());
  CHECK_ARG(t.is_contiguous(), name, "must be contiguous");
}

const float* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

void check_launch(cudaError_t err, const char* what) { toykernels::check_launch(err, kOp, what); }

std::vector<at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor* residual,
                                     const c10::optional<at::Tensor>& weight,
                                     const c10::optional<at::Tensor>& bias, double eps) {
  check_rows(x, "x", nullptr);
  if (residual != nullptr) check_rows(*residual, "residual", &x);
  CHECK_ARG(eps > 0, "eps", "must be > 0, got ", eps);
  const DType dtype = dtype_of(x, "x");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const auto w = param_as_float(weight, "weight", x);
  const auto b = param_as_float(bias, "bias", x);

  const int64_t rows = x.size(0);
  const int C = static_cast<int>(x.size(1));
  at::Tensor y = at::empty_like(x);
  at::Tensor s = residual != nullptr ? at::empty_like(x) : at::Tensor();
  at::Tensor mean = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  check_launch(toykernels::layer_norm_forward(
                   dtype, x.data_ptr(), residual != nullptr ? residual->data_ptr() : nullptr,
                   residual != nullptr ? s.data_ptr() : nullptr, ptr_or_null(w), ptr_or_null(b),
                   y.data_ptr(), mean.data_ptr<float>(), rstd.data_ptr<float>(), rows, C,
                   static_cast<float>(eps), at::cuda::getCurrentCUDAStream()),
               "forward launch");
  if (residual != nullptr) return {s, y, mean, rstd};
  return {y, mean, rstd};
}

// -> [y, mean, rstd]
std::vector<at::Tensor> layer_norm_forward(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                           const c10::optional<at::Tensor>& bias, double eps) {
  return forward_impl(x, nullptr, weight, bias, eps);
}

// -> [s = x + residual, y = LayerNorm(s), mean, rstd]
std::vector<at::Tensor> add_layer_norm_forward(const at::Tensor& x, const at::Tensor& residual,
                                               const c10::optional<at::Tensor>& weight,
                                               const c10::optional<at::Tensor>& bias, double eps) {
  return forward_impl(x, &residual, weight, bias, eps);
}

// -> [dx, dweight (fp32, or None without weight), dbias (fp32, or None unless has_bias)]
std::vector<at::Tensor> layer_norm_backward(const at::Tensor& dy, const at::Tensor& x,
                                            const c10::optional<at::Tensor>& weight, const at::Tensor& mean,
                                            const at::Tensor& rstd, bool has_bias) {
  check_rows(x, "x", nullptr);
  check_rows(dy, "dy", &x);
  check_stats(mean, "mean", x);
  check_stats(rstd, "rstd", x);
  const DType dtype = dtype_of(x, "x");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const auto w = param_as_float(weight, "weight", x);

  const int64_t rows = x.size(0);
  const int C = static_cast<int>(x.size(1));
  const int num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  at::Tensor dx = at::empty_like(x);
  const auto f32 = x.options().dtype(at::kFloat);
  // dweight / dbias are always computed (it costs nothing extra); handed back when wanted
  at::Tensor dweight = at::empty({C}, f32);
  at::Tensor dbias = at::empty({C}, f32);
  const int64_t workspace_floats = toykernels::layer_norm_backward_workspace(rows, C, num_sms);
  at::Tensor workspace = at::empty({workspace_floats > 0 ? workspace_floats : 1}, f32);
  check_launch(toykernels::layer_norm_backward(
                   dtype, dy.data_ptr(), x.data_ptr(), ptr_or_null(w), mean.data_ptr<float>(),
                   rstd.data_ptr<float>(), dx.data_ptr(), dweight.data_ptr<float>(),
                   dbias.data_ptr<float>(), workspace.data_ptr<float>(), rows, C, num_sms,
                   at::cuda::getCurrentCUDAStream()),
               "backward launch");
  return {dx, w.has_value() ? dweight : at::Tensor(), has_bias ? dbias : at::Tensor()};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "toykernels fused LayerNorm (forward, residual-add forward, backward)";
  m.def("layer_norm_forward", &layer_norm_forward, "LayerNorm forward -> [y, mean, rstd]",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"));
  m.def("add_layer_norm_forward", &add_layer_norm_forward,
        "x + residual then LayerNorm -> [s, y, mean, rstd]", py::arg("x"), py::arg("residual"),
        py::arg("weight"), py::arg("bias"), py::arg("eps"));
  m.def("layer_norm_backward", &layer_norm_backward, "LayerNorm backward -> [dx, dweight, dbias]",
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
        py::arg("has_bias"));
}
