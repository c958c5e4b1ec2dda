// emulator_harness.cpp (LayerNorm): runs the real LayerNorm launchers of layernorm.cu (the API
// of layernorm.h) under the CUDA emulator (tools/cuda_emu) and checks every output against a
// float64 reference. emulator_cases.py, beside it, builds it and runs its cases.
//
//   layernorm_emu [--occupancy N] [--report-launches] < cases
//
// One case per input line, "key=value" words (every key but name has a default):
//   name=<text>            reported back
//   dtype=f32|f16|bf16     rows=<n>  C=<n>
//   fused=0|1              residual add: y = LayerNorm(x + residual), s = x + residual
//   weight=0|1  bias=0|1   the affine parameters (fp32), or null
//   misalign=0|1           x, residual, s, y, dy, dx one element off 16-byte alignment
//   wmisalign=0|1          weight and bias one float off alignment
//   sms=<n>                the num_sms the backward is told (sizes its grid and workspace)
//   seed=<n>               the inputs and the scheduler's choices
// --occupancy: what cudaOccupancyMaxActiveBlocksPerMultiprocessor answers (the launcher asks
// once per kernel instantiation and keeps the answer, so it is per process, not per case).
//
// Prints one line per case, "ok <name>" or "FAIL <name>: <first problem>" (flushed: after a
// crash, the case after the last line is to blame; a memory fault prints its own FAIL line and
// exits with status 3), then
// "done cases=<n> failures=<n> emu_errors=<n>" and, with --report-launches, a
// "launched <count> <kernel>" line per kernel instantiation in the binary.
// Exit status 1 when a case failed.
//
// What is checked, per case:
//   - outputs start as NaN (0xff bytes): an element that is never written fails;
//   - y, mean, rstd, s, dx, dweight, dbias against float64 (dx, dweight and dbias from the
//     kernel's own mean/rstd), within the rounding of the output type plus a small fp32 margin;
//     s exactly (x + residual rounded once to the input type);
//   - every buffer sits in a mapping of its own between inaccessible pages: an access far out
//     of bounds faults (reported with the kernel, block and thread); near the data, guard
//     bytes: outputs' (and the workspace's) must keep their pattern (no write out of bounds),
//     inputs' are NaN (a read out of bounds poisons the result);
//   - an access misaligned for its type (a 16-byte pack at an 8-byte address) traps: the
//     kernel source is compiled with -fsanitize=alignment;
//   - inputs unchanged; no emulator error (emu::error) during the case.

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "emu.h"
#include "harness.h"
#include "layernorm.h"

using toykernels::DType;

namespace {

using harness::from_float;
using harness::to_float;
using harness::unit_roundoff;

template <typename T> DType dtype_of();
template <> DType dtype_of<float>() { return DType::Float32; }
template <> DType dtype_of<__half>() { return DType::Float16; }
template <> DType dtype_of<__nv_bfloat16>() { return DType::BFloat16; }

// The error allowed on top of the output rounding, relative to the scale of the terms: fp32
// arithmetic in a different order than the float64 reference.
constexpr double kFp32Margin = 1e-5;
constexpr double kSumMargin = 4e-5;  // dweight/dbias: fp32 sums over up to a few hundred rows

// ---- buffers ----
// A guarded buffer (harness.h): data starts as NaN (0xff bytes), the bytes around it hold
// guard_byte.
class Buffer : public harness::GuardedBuffer {
 public:
  Buffer(size_t n, size_t elem_size, int misalign, uint8_t guard_byte)
      : GuardedBuffer(n, elem_size, misalign, guard_byte) {
    fill(0xff);
  }
};
constexpr uint8_t kInputGuard = 0xff;   // NaN
constexpr uint8_t kOutputGuard = 0xab;  // checked after the call

// ---- cases ----
struct Case {
  std::string name = "?", dtype = "f32";
  int64_t rows = 1;
  int C = 1;
  bool fused = false, weight = true, bias = true, misalign = false, wmisalign = false;
  int sms = 1;
  uint64_t seed = 1;
};

bool parse_case(const std::string& line, Case& c, std::string& problem) {
  auto set = [&c](const std::string& key, const std::string&, const long long* number) {
    if (number == nullptr) return false;
    if (key == "rows") c.rows = *number;
    else if (key == "C") c.C = static_cast<int>(*number);
    else if (key == "fused") c.fused = *number != 0;
    else if (key == "weight") c.weight = *number != 0;
    else if (key == "bias") c.bias = *number != 0;
    else if (key == "misalign") c.misalign = *number != 0;
    else if (key == "wmisalign") c.wmisalign = *number != 0;
    else if (key == "sms") c.sms = static_cast<int>(*number);
    else return false;
    return true;
  };
  return harness::parse_words(line, c, problem, set);
}

// `got` within `tol` of `want`; false for NaN.
bool close(double got, double want, double tol) { return std::fabs(got - want) <= tol; }

// Runs forward then backward for one case; returns "" when every check passes.
template <typename T> std::string run_case(const Case& c) {
  const int64_t rows = c.rows;
  const int C = c.C;
  const size_t n = static_cast<size_t>(rows) * C;
  const int mis = c.misalign ? 1 : 0, wmis = c.wmisalign ? 1 : 0;
  const double u = unit_roundoff<T>();

  // inputs, guarded by NaN
  Buffer x(n, sizeof(T), mis, kInputGuard), residual(n, sizeof(T), mis, kInputGuard);
  Buffer dy(n, sizeof(T), mis, kInputGuard);
  Buffer weight(C, sizeof(float), wmis, kInputGuard), bias(C, sizeof(float), wmis, kInputGuard);
  std::mt19937_64 rng(c.seed);
  std::normal_distribution<float> normal;
  for (size_t i = 0; i < n; ++i) {
    x.data<T>()[i] = from_float<T>(2 * normal(rng) + 0.5f);  // not centred, not unit scale
    residual.data<T>()[i] = from_float<T>(normal(rng));
    dy.data<T>()[i] = from_float<T>(normal(rng));
  }
  for (int j = 0; j < C; ++j) {
    weight.data<float>()[j] = 1 + 0.5f * normal(rng);
    bias.data<float>()[j] = normal(rng);
  }
  // outputs, NaN inside, a byte pattern around
  Buffer y(n, sizeof(T), mis, kOutputGuard), s(n, sizeof(T), mis, kOutputGuard);
  Buffer mean(rows, sizeof(float), 0, kOutputGuard), rstd(rows, sizeof(float), 0, kOutputGuard);
  const auto x0 = x.snapshot(), residual0 = residual.snapshot();
  const auto weight0 = weight.snapshot(), bias0 = bias.snapshot();

  // ---- forward ----
  const float eps = 1e-5f;
  const float* w = c.weight ? weight.data<float>() : nullptr;
  const float* b = c.bias ? bias.data<float>() : nullptr;
  cudaError_t e = toykernels::layer_norm_forward(
      dtype_of<T>(), x.data(), c.fused ? residual.data() : nullptr, c.fused ? s.data() : nullptr,
      w, b, y.data(), mean.data<float>(), rstd.data<float>(), rows, C, eps, nullptr);
  CHECK(e == cudaSuccess, "forward returned error %d", static_cast<int>(e));
  CHECK(y.guards_intact() && mean.guards_intact() && rstd.guards_intact() && s.guards_intact(),
        "forward wrote out of bounds");
  CHECK(x.unchanged_since(x0) && residual.unchanged_since(residual0) &&
            weight.unchanged_since(weight0) && bias.unchanged_since(bias0),
        "forward changed an input");

  // the normalized input: x, or s = x + residual rounded to T (as returned)
  std::vector<double> in(n);
  for (size_t i = 0; i < n; ++i) {
    const float xi = to_float(x.data<T>()[i]);
    in[i] = c.fused ? to_float(from_float<T>(xi + to_float(residual.data<T>()[i]))) : xi;
    if (c.fused) {
      const float got = to_float(s.data<T>()[i]);
      CHECK(got == in[i], "s[%zu] = %.9g, want %.9g", i, got, in[i]);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const double* row = &in[r * C];
    double m = 0, var = 0;
    for (int j = 0; j < C; ++j) m += row[j];
    m /= C;
    for (int j = 0; j < C; ++j) var += (row[j] - m) * (row[j] - m);
    var /= C;
    const double rs = 1 / std::sqrt(var + eps);
    double row_scale = 1;  // the largest |x|: the scale of the fp32 sums' rounding
    for (int j = 0; j < C; ++j) row_scale = std::fmax(row_scale, std::fabs(row[j]));
    const float got_mean = mean.data<float>()[r], got_rstd = rstd.data<float>()[r];
    CHECK(close(got_mean, m, kFp32Margin * row_scale), "mean[%lld] = %.9g, want %.9g",
          (long long)r, got_mean, m);
    CHECK(close(got_rstd, rs, kFp32Margin * rs), "rstd[%lld] = %.9g, want %.9g", (long long)r,
          got_rstd, rs);
    for (int j = 0; j < C; ++j) {
      const double want = (row[j] - m) * rs * (w ? w[j] : 1.0) + (b ? b[j] : 0.0);
      const double got = to_float(y.data<T>()[r * C + j]);
      const double tol = 2 * u * std::fabs(want) + kFp32Margin * std::fmax(1.0, std::fabs(want));
      CHECK(close(got, want, tol), "y[%lld, %d] = %.9g, want %.9g", (long long)r, j, got, want);
    }
  }

  // ---- backward (of the input that was normalized, with the kernel's mean and rstd) ----
  Buffer& xin = c.fused ? s : x;
  const int64_t workspace_floats = toykernels::layer_norm_backward_workspace(rows, C, c.sms);
  CHECK(workspace_floats >= 0, "negative workspace size %lld", (long long)workspace_floats);
  Buffer workspace(workspace_floats > 0 ? workspace_floats : 1, sizeof(float), 0, 0xcd);
  Buffer dx(n, sizeof(T), mis, kOutputGuard);
  Buffer dweight(C, sizeof(float), 0, kOutputGuard), dbias(C, sizeof(float), 0, kOutputGuard);
  const auto dy0 = dy.snapshot(), xin0 = xin.snapshot();
  const auto mean0 = mean.snapshot(), rstd0 = rstd.snapshot();
  e = toykernels::layer_norm_backward(dtype_of<T>(), dy.data(), xin.data(), w, mean.data<float>(),
                                      rstd.data<float>(), dx.data(), dweight.data<float>(),
                                      dbias.data<float>(), workspace.data<float>(), rows, C, c.sms,
                                      nullptr);
  CHECK(e == cudaSuccess, "backward returned error %d", static_cast<int>(e));
  CHECK(dx.guards_intact() && dweight.guards_intact() && dbias.guards_intact(),
        "backward wrote out of bounds");
  CHECK(workspace.guards_intact(), "backward wrote past its workspace (%lld floats)",
        (long long)workspace_floats);
  CHECK(dy.unchanged_since(dy0) && xin.unchanged_since(xin0) && weight.unchanged_since(weight0) &&
            mean.unchanged_since(mean0) && rstd.unchanged_since(rstd0),
        "backward changed an input");

  std::vector<double> want_dw(C, 0), want_db(C, 0), scale_dw(C, 1), scale_db(C, 1);
  for (int64_t r = 0; r < rows; ++r) {
    const double m = mean.data<float>()[r], rs = rstd.data<float>()[r];
    const T* xr = xin.data<T>() + r * C;
    const T* dyr = dy.data<T>() + r * C;
    double mean_gx = 0, mean_g = 0, scale = 1;
    for (int j = 0; j < C; ++j) {
      const double xhat = (to_float(xr[j]) - m) * rs, d = to_float(dyr[j]);
      const double g = d * (w ? w[j] : 1.0);
      mean_gx += g * xhat;
      mean_g += g;
      scale = std::fmax(scale, std::fabs(rs * g));
      want_dw[j] += d * xhat;
      want_db[j] += d;
      scale_dw[j] += std::fabs(d * xhat);
      scale_db[j] += std::fabs(d);
    }
    mean_gx /= C;
    mean_g /= C;
    for (int j = 0; j < C; ++j) {
      const double xhat = (to_float(xr[j]) - m) * rs, g = to_float(dyr[j]) * (w ? w[j] : 1.0);
      const double want = rs * (g - mean_g - xhat * mean_gx);
      const double got = to_float(dx.data<T>()[r * C + j]);
      CHECK(close(got, want, 2 * u * std::fabs(want) + kFp32Margin * scale),
            "dx[%lld, %d] = %.9g, want %.9g", (long long)r, j, got, want);
    }
  }
  for (int j = 0; j < C; ++j) {
    const double got_dw = dweight.data<float>()[j], got_db = dbias.data<float>()[j];
    CHECK(close(got_dw, want_dw[j], kSumMargin * scale_dw[j]), "dweight[%d] = %.9g, want %.9g", j,
          got_dw, want_dw[j]);
    CHECK(close(got_db, want_db[j], kSumMargin * scale_db[j]), "dbias[%d] = %.9g, want %.9g", j,
          got_db, want_db[j]);
  }
  return "";
}

std::string run_one(const Case& c) {
  if (c.dtype == "f32") return run_case<float>(c);
  if (c.dtype == "f16") return run_case<__half>(c);
  return run_case<__nv_bfloat16>(c);
}

}  // namespace

int main(int argc, char** argv) {
  bool report_launches = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--occupancy" && i + 1 < argc) {
      emu::set_occupancy(std::atoi(argv[++i]));
    } else if (arg == "--report-launches") {
      report_launches = true;
    } else {
      std::fprintf(stderr, "usage: %s [--occupancy N] [--report-launches] < cases\n", argv[0]);
      return 2;
    }
  }
  return harness::run_cases(parse_case, run_one, report_launches);
}
