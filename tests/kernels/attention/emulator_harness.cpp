// emulator_harness.cpp (attention): runs the real causal-attention launchers of attention.cu
// (the API of attention.h) under the CUDA emulator (tools/cuda_emu) and checks every output
// against a float64 reference. emulator_cases.py, beside it, builds it and runs its cases.
//
//   attention_emu [--report-launches] [--verbose] < cases
//
// One case per input line, "key=value" words (every key but name has a default):
//   name=<text>                  reported back
//   dtype=f32|f16|bf16  B=<n>  H=<n>  Tq=<n>  Tk=<n>  D=<n>
//   layout=contig|qkv|cache|padded
//       contig  every tensor (B, H, T, D), contiguous
//       qkv     q, k, v transposed out of one fused (B, T, 3, H, D) buffer, dq, dk, dv likewise
//               out of one fused gradient buffer; out and dout (B, T, H, D) (needs Tq == Tk)
//       cache   k and v narrowed out of (B, H, Tk + 37, D) caches whose tail is NaN; q, out,
//               dout, dq (B, Tq, H, D); dk, dv contiguous
//       padded  every tensor (B, H, T, D) with rows of D + 8 elements and 8 more per head: the
//               padding of inputs is NaN, that of outputs must not be written
//   invalid=0|1                  1: a problem the launchers must refuse (D not 32/64/128,
//                                Tq > Tk, ...): cudaErrorInvalidValue and nothing written
//   seed=<n>                     the inputs and the scheduler's choices
//
// Prints one line per case, "ok <name>" or "FAIL <name>: <first problem>" (flushed: after a
// crash, the case after the last line is to blame; a memory fault prints its own FAIL line and
// exits with status 3), then "done cases=<n> failures=<n> emu_errors=<n>" and, with
// --report-launches, a "launched <count> <kernel>" line per kernel instantiation in the binary.
// --verbose: each "ok" line adds the largest error / tolerance ratio of the case and where.
// Exit status 1 when a case failed.
//
// What is checked, per case (forward, then backward from the forward's out and lse):
//   - out, lse, dq, dk, dv against float64 computed from the inputs as the kernel sees them
//     (rounded to the dtype), scale 1/sqrt(D), the causal mask aligned to the bottom right
//     (query i sees keys 0 .. i + Tk - Tq). The tolerance of each element is an error bound
//     built from the terms that make it: fp32 arithmetic (a relative 2e-5 of the sum of the
//     terms' magnitudes, and of the scores', amplified through exp), the rounding of the
//     outputs, and for fp16/bf16 the rounding of P and dS to 16 bits before their matmuls
//     (tensor cores), times a safety factor of 3. An index off by one row, key or column
//     lands far outside;
//   - outputs start as NaN (0xff bytes): an element that is never written fails;
//   - every buffer sits in a mapping of its own between inaccessible pages (an access far out
//     faults; the fault is reported with the kernel, block and thread); the bytes of a buffer
//     that belong to no tensor element (guards, padding, a KV cache's tail) are NaN in inputs
//     and a byte pattern in outputs, which must survive: no write outside the elements;
//   - inputs unchanged; an access misaligned for its type traps (-fsanitize=alignment);
//   - no emulator error (emu::error) during the case.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention.h"
#include "emu.h"
#include "harness.h"

using toykernels::AttnDType;
using toykernels::AttnStrides;

namespace {

using harness::from_float;
using harness::to_float;
using harness::unit_roundoff;

template <typename T> AttnDType dtype_of();
template <> AttnDType dtype_of<float>() { return AttnDType::Float32; }
template <> AttnDType dtype_of<__half>() { return AttnDType::Float16; }
template <> AttnDType dtype_of<__nv_bfloat16>() { return AttnDType::BFloat16; }

// The largest error of rounding a value below T's normal range to T (absolute; fp16 only, bf16
// has the range of fp32).
template <typename T> double subnormal_step() {
  return std::is_same<T, __half>::value ? std::ldexp(1.0, -25) : 0.0;
}
constexpr double kFp32 = 5e-6;   // fp32 arithmetic, relative to the sum of the terms' magnitudes
constexpr double kSafety = 3.0;  // on top of the error bound

// ---- buffers ----
// A guarded buffer (harness.h) in which every byte that no tensor element owns (around the data
// and inside it: padding, a cache's tail) holds `free_byte`.
class Buffer : public harness::GuardedBuffer {
 public:
  Buffer(size_t n, size_t elem_size, uint8_t free_byte)
      : GuardedBuffer(n, elem_size, 0, free_byte), owned_(inside_bytes_, false) {}

  // element e belongs to a tensor
  void own(size_t e) {
    for (size_t b = 0; b < elem_size_; ++b) owned_[data_ - inside_ + e * elem_size_ + b] = true;
  }
  void fill_owned(uint8_t byte) {
    for (size_t i = 0; i < inside_bytes_; ++i) if (owned_[i]) inside_[i] = byte;
  }
  // the bytes that no element owns still hold free_byte
  bool free_bytes_intact() const {
    for (size_t i = 0; i < inside_bytes_; ++i) {
      if (!owned_[i] && inside_[i] != guard_byte_) return false;
    }
    return true;
  }

 private:
  std::vector<bool> owned_;
};
constexpr uint8_t kInputFree = 0xff;   // NaN
constexpr uint8_t kOutputFree = 0xab;  // checked after the call

// A (B, H, T, D) tensor: element (b, h, t, d) at buffer element offset + b * s.batch +
// h * s.head + t * s.time + d.
struct Tensor {
  Buffer* buffer = nullptr;
  size_t offset = 0;
  AttnStrides s{0, 0, 0};
  int64_t B = 0, H = 0, T = 0;
  int D = 0;
  size_t index(int64_t b, int64_t h, int64_t t, int d) const {
    return offset + b * s.batch + h * s.head + t * s.time + d;
  }
  template <typename E> E* data() const { return buffer->data<E>() + offset; }
  template <typename E> E& at(int64_t b, int64_t h, int64_t t, int d) const {
    return buffer->data<E>()[index(b, h, t, d)];
  }
  void own_all() const {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < T; ++t)
          for (int d = 0; d < D; ++d) buffer->own(index(b, h, t, d));
  }
};

// ---- cases ----
struct Case {
  std::string name = "?", dtype = "f32", layout = "contig";
  int64_t B = 1, H = 1;
  int Tq = 1, Tk = 1, D = 32;
  bool invalid = false;
  uint64_t seed = 1;
};

bool parse_case(const std::string& line, Case& c, std::string& problem) {
  auto set = [&c](const std::string& key, const std::string& value, const long long* number) {
    if (key == "layout") c.layout = value;
    else if (number == nullptr) return false;
    else if (key == "B") c.B = *number;
    else if (key == "H") c.H = *number;
    else if (key == "Tq") c.Tq = static_cast<int>(*number);
    else if (key == "Tk") c.Tk = static_cast<int>(*number);
    else if (key == "D") c.D = static_cast<int>(*number);
    else if (key == "invalid") c.invalid = *number != 0;
    else return false;
    return true;
  };
  if (!harness::parse_words(line, c, problem, set)) return false;
  if (c.layout != "contig" && c.layout != "qkv" && c.layout != "cache" && c.layout != "padded") {
    problem = "layout must be contig, qkv, cache or padded";
    return false;
  }
  if (c.layout == "qkv" && c.Tq != c.Tk) {
    problem = "layout qkv needs Tq == Tk";
    return false;
  }
  if (c.B < 0 || c.H < 0 || c.Tq < 0 || c.Tk < 0 || c.D < 1 || c.D % 8 != 0) {
    problem = "B, H, Tq, Tk >= 0 and D a positive multiple of 8";
    return false;
  }
  return true;
}

// The largest |got - want| / tolerance of the running case, and where (--verbose prints it).
double worst_ratio = 0;
std::string worst_where;

// `got` within `tol` of `want`; false for NaN.
bool close(double got, double want, double tol, const char* what) {
  const double ratio = std::fabs(got - want) / tol;
  if (!(ratio <= worst_ratio)) {
    worst_ratio = ratio;
    worst_where = what;
  }
  return std::fabs(got - want) <= tol;
}

// The buffers and tensors of one case, laid out as its `layout` says.
struct Problem {
  std::vector<std::unique_ptr<Buffer>> buffers;
  Tensor q, k, v, out, dout, dq, dk, dv;

  Buffer* add(size_t n, size_t elem_size, uint8_t free_byte) {
    buffers.push_back(std::make_unique<Buffer>(n, elem_size, free_byte));
    return buffers.back().get();
  }
  static Tensor make(Buffer* buf, size_t offset, AttnStrides s, int64_t B, int64_t H, int64_t T,
                     int D) {
    Tensor t;
    t.buffer = buf;
    t.offset = offset;
    t.s = s;
    t.B = B;
    t.H = H;
    t.T = T;
    t.D = D;
    t.own_all();
    return t;
  }
  // (B, H, T, D) contiguous, or with rows of D + pad and `head_pad` more elements per head
  Tensor bhtd(size_t elem, uint8_t free_byte, int64_t B, int64_t H, int64_t T, int D, int pad = 0,
              int head_pad = 0) {
    const int64_t time = D + pad, head = T * time + head_pad, batch = H * head;
    Buffer* buf = add(static_cast<size_t>(std::max<int64_t>(B * batch, 1)), elem, free_byte);
    return make(buf, 0, AttnStrides{batch, head, time}, B, H, T, D);
  }
  // (B, T, H, D) memory, seen as (B, H, T, D)
  Tensor bthd(size_t elem, uint8_t free_byte, int64_t B, int64_t H, int64_t T, int D) {
    Buffer* buf = add(static_cast<size_t>(std::max<int64_t>(B * T * H * D, 1)), elem, free_byte);
    return make(buf, 0, AttnStrides{T * H * D, D, H * D}, B, H, T, D);
  }
  // q, k, v (or dq, dk, dv) out of one (B, T, 3, H, D) buffer
  void fused(size_t elem, uint8_t free_byte, int64_t B, int64_t H, int64_t T, int D, Tensor& a,
             Tensor& b, Tensor& c) {
    Buffer* buf = add(static_cast<size_t>(std::max<int64_t>(B * T * 3 * H * D, 1)), elem, free_byte);
    const AttnStrides s{T * 3 * H * D, D, 3 * H * D};
    a = make(buf, 0, s, B, H, T, D);
    b = make(buf, static_cast<size_t>(H * D), s, B, H, T, D);
    c = make(buf, static_cast<size_t>(2 * H * D), s, B, H, T, D);
  }
  // rows 0 .. T of a (B, H, T + extra, D) cache
  Tensor narrowed(size_t elem, uint8_t free_byte, int64_t B, int64_t H, int64_t T, int D, int extra) {
    const int64_t time = D, head = (T + extra) * time, batch = H * head;
    Buffer* buf = add(static_cast<size_t>(std::max<int64_t>(B * batch, 1)), elem, free_byte);
    return make(buf, 0, AttnStrides{batch, head, time}, B, H, T, D);
  }

  Problem(const Case& c, size_t elem) {
    const int64_t B = c.B, H = c.H;
    const int D = c.D;
    if (c.layout == "contig") {
      q = bhtd(elem, kInputFree, B, H, c.Tq, D);
      k = bhtd(elem, kInputFree, B, H, c.Tk, D);
      v = bhtd(elem, kInputFree, B, H, c.Tk, D);
      dout = bhtd(elem, kInputFree, B, H, c.Tq, D);
      out = bhtd(elem, kOutputFree, B, H, c.Tq, D);
      dq = bhtd(elem, kOutputFree, B, H, c.Tq, D);
      dk = bhtd(elem, kOutputFree, B, H, c.Tk, D);
      dv = bhtd(elem, kOutputFree, B, H, c.Tk, D);
    } else if (c.layout == "qkv") {
      fused(elem, kInputFree, B, H, c.Tq, D, q, k, v);
      fused(elem, kOutputFree, B, H, c.Tq, D, dq, dk, dv);
      out = bthd(elem, kOutputFree, B, H, c.Tq, D);
      dout = bthd(elem, kInputFree, B, H, c.Tq, D);
    } else if (c.layout == "cache") {
      q = bthd(elem, kInputFree, B, H, c.Tq, D);
      k = narrowed(elem, kInputFree, B, H, c.Tk, D, 37);
      v = narrowed(elem, kInputFree, B, H, c.Tk, D, 37);
      dout = bthd(elem, kInputFree, B, H, c.Tq, D);
      out = bthd(elem, kOutputFree, B, H, c.Tq, D);
      dq = bthd(elem, kOutputFree, B, H, c.Tq, D);
      dk = bhtd(elem, kOutputFree, B, H, c.Tk, D);
      dv = bhtd(elem, kOutputFree, B, H, c.Tk, D);
    } else {  // padded
      q = bhtd(elem, kInputFree, B, H, c.Tq, D, 8, 8);
      k = bhtd(elem, kInputFree, B, H, c.Tk, D, 8, 8);
      v = bhtd(elem, kInputFree, B, H, c.Tk, D, 8, 8);
      dout = bhtd(elem, kInputFree, B, H, c.Tq, D, 8, 8);
      out = bhtd(elem, kOutputFree, B, H, c.Tq, D, 8, 8);
      dq = bhtd(elem, kOutputFree, B, H, c.Tq, D, 8, 8);
      dk = bhtd(elem, kOutputFree, B, H, c.Tk, D, 8, 8);
      dv = bhtd(elem, kOutputFree, B, H, c.Tk, D, 8, 8);
    }
  }
};

// What a launcher ("forward", "backward") returned and wrote: cudaErrorInvalidValue for an
// invalid problem, else success, and nothing outside the elements of the outputs and of
// `stats` (lse, delta). "" when all is well.
std::string check_call(const char* what, cudaError_t e, bool invalid,
                       const std::vector<Buffer*>& outputs, const Buffer& stats,
                       const char* stats_name) {
  if (invalid) {
    CHECK(e == cudaErrorInvalidValue, "%s of an invalid problem returned %d, want %d", what,
          static_cast<int>(e), static_cast<int>(cudaErrorInvalidValue));
  } else {
    CHECK(e == cudaSuccess, "%s returned error %d", what, static_cast<int>(e));
  }
  for (const Buffer* b : outputs) {
    CHECK(b->free_bytes_intact(), "%s wrote outside the elements of an output", what);
  }
  CHECK(stats.free_bytes_intact(), "%s wrote outside %s", what, stats_name);
  return "";
}

// Runs forward then backward for one case; returns "" when every check passes.
template <typename T> std::string run_case(const Case& c) {
  const int64_t B = c.B, H = c.H, BH = B * H;
  const int Tq = c.Tq, Tk = c.Tk, D = c.D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const double u = unit_roundoff<T>();
  const bool tensor_cores = !std::is_same<T, float>::value;  // P and dS rounded to T
  const double up = tensor_cores ? u : 0.0, sub = tensor_cores ? subnormal_step<T>() : 0.0;

  Problem pr(c, sizeof(T));
  std::mt19937_64 rng(c.seed);
  std::normal_distribution<float> normal;
  auto fill = [&](const Tensor& t, float sigma) {
    for (int64_t b = 0; b < t.B; ++b)
      for (int64_t h = 0; h < t.H; ++h)
        for (int64_t i = 0; i < t.T; ++i)
          for (int d = 0; d < D; ++d) t.at<T>(b, h, i, d) = from_float<T>(sigma * normal(rng));
  };
  fill(pr.q, 1.5f);  // scores of about 1.5: softmax neither flat nor one-hot
  fill(pr.k, 1.0f);
  fill(pr.v, 1.0f);
  fill(pr.dout, 1.0f);
  for (const Tensor* t : {&pr.out, &pr.dq, &pr.dk, &pr.dv}) t->buffer->fill_owned(0xff);  // NaN
  const size_t stats = static_cast<size_t>(std::max<int64_t>(BH * Tq, 1));
  Buffer lse(stats, sizeof(float), kOutputFree), delta(stats, sizeof(float), kOutputFree);
  for (size_t i = 0; i < static_cast<size_t>(BH * Tq); ++i) {
    lse.own(i);
    delta.own(i);
  }
  lse.fill_owned(0xff);
  delta.fill_owned(0xff);

  std::vector<Buffer*> inputs, outputs;
  for (const Tensor* t : {&pr.q, &pr.k, &pr.v, &pr.dout}) inputs.push_back(t->buffer);
  for (const Tensor* t : {&pr.out, &pr.dq, &pr.dk, &pr.dv}) outputs.push_back(t->buffer);
  std::vector<std::vector<uint8_t>> before;
  for (Buffer* b : inputs) before.push_back(b->snapshot());
  auto inputs_unchanged = [&] {
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!inputs[i]->unchanged_since(before[i])) return false;
    }
    return true;
  };

  const bool supported = toykernels::attention_head_dim_supported(D);
  CHECK(supported == (D == 32 || D == 64 || D == 128), "attention_head_dim_supported(%d) = %d", D,
        supported);

  // ---- forward ----
  cudaError_t e = toykernels::attention_forward(
      dtype_of<T>(), pr.q.data<T>(), pr.q.s, pr.k.data<T>(), pr.k.s, pr.v.data<T>(), pr.v.s,
      pr.out.data<T>(), pr.out.s, lse.data<float>(), B, H, Tq, Tk, D, scale, nullptr);
  std::string problem = check_call("forward", e, c.invalid, outputs, lse, "lse");
  if (!problem.empty()) return problem;
  CHECK(inputs_unchanged(), "forward changed an input");

  // ---- backward, from the kernel's out and lse ----
  const auto out0 = pr.out.buffer->snapshot(), lse0 = lse.snapshot();
  e = toykernels::attention_backward(
      dtype_of<T>(), pr.dout.data<T>(), pr.dout.s, pr.q.data<T>(), pr.q.s, pr.k.data<T>(), pr.k.s,
      pr.v.data<T>(), pr.v.s, pr.out.data<T>(), pr.out.s, lse.data<float>(), delta.data<float>(),
      pr.dq.data<T>(), pr.dq.s, pr.dk.data<T>(), pr.dk.s, pr.dv.data<T>(), pr.dv.s, B, H, Tq, Tk, D,
      scale, nullptr);
  problem = check_call("backward", e, c.invalid, outputs, delta, "delta");
  if (!problem.empty()) return problem;
  CHECK(inputs_unchanged() && pr.out.buffer->unchanged_since(out0) && lse.unchanged_since(lse0),
        "backward changed an input");
  if (c.invalid) {  // nothing written: every output element still NaN bytes
    for (const Tensor* t : {&pr.out, &pr.dq, &pr.dk, &pr.dv}) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < t->T; ++i)
            for (int d = 0; d < D; ++d) {
              const T x = t->at<T>(b, h, i, d);
              uint8_t bytes[sizeof(T)];
              std::memcpy(bytes, &x, sizeof(T));
              for (uint8_t byte : bytes) CHECK(byte == 0xff, "an invalid problem wrote an output");
            }
    }
    for (size_t i = 0; i < static_cast<size_t>(BH * Tq); ++i) {
      CHECK(std::isnan(lse.data<float>()[i]), "an invalid problem wrote lse");
    }
    return "";
  }

  // ---- float64 reference and error bounds, per (b, h) ----
  const int offset = Tk - Tq;
  std::vector<double> S(static_cast<size_t>(Tq) * Tk), Sabs(S.size()), P(S.size()), dP(S.size()),
      dPabs(S.size()), dS(S.size()), eDS(S.size()), rP(S.size());
  std::vector<double> qv(static_cast<size_t>(Tq) * D), kv(static_cast<size_t>(Tk) * D), vv(kv.size()),
      dov(qv.size()), ov(qv.size()), tol_out(qv.size());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t bh = b * H + h;
      for (int i = 0; i < Tq; ++i)
        for (int d = 0; d < D; ++d) {
          qv[i * D + d] = to_float(pr.q.at<T>(b, h, i, d));
          dov[i * D + d] = to_float(pr.dout.at<T>(b, h, i, d));
        }
      for (int j = 0; j < Tk; ++j)
        for (int d = 0; d < D; ++d) {
          kv[j * D + d] = to_float(pr.k.at<T>(b, h, j, d));
          vv[j * D + d] = to_float(pr.v.at<T>(b, h, j, d));
        }
      // forward
      std::vector<double> lse_want(Tq), tol_lse(Tq);
      for (int i = 0; i < Tq; ++i) {
        const int last = i + offset;
        double m = -INFINITY, max_err_s = 0;
        for (int j = 0; j <= last; ++j) {
          double dot = 0, abs_dot = 0;
          for (int d = 0; d < D; ++d) {
            dot += qv[i * D + d] * kv[j * D + d];
            abs_dot += std::fabs(qv[i * D + d] * kv[j * D + d]);
          }
          S[i * Tk + j] = dot * scale;
          Sabs[i * Tk + j] = abs_dot * scale;
          max_err_s = std::fmax(max_err_s, kFp32 * Sabs[i * Tk + j]);
          m = std::fmax(m, S[i * Tk + j]);
        }
        double l = 0;
        for (int j = 0; j <= last; ++j) l += std::exp(S[i * Tk + j] - m);
        lse_want[i] = m + std::log(l);
        tol_lse[i] = 2 * max_err_s + kFp32 * (1 + std::fabs(lse_want[i]));
        for (int j = 0; j < Tk; ++j) {
          P[i * Tk + j] = j <= last ? std::exp(S[i * Tk + j] - lse_want[i]) : 0.0;
        }
        for (int d = 0; d < D; ++d) {
          double o = 0, mag = 0;
          for (int j = 0; j <= last; ++j) {
            o += P[i * Tk + j] * vv[j * D + d];
            mag += P[i * Tk + j] * std::fabs(vv[j * D + d]);
          }
          ov[i * D + d] = o;
          tol_out[i * D + d] = (2 * max_err_s + kFp32 + 2 * up) * mag + u * std::fabs(o) + sub;
        }
      }
      for (int i = 0; i < Tq; ++i) {
        const double got = lse.data<float>()[bh * Tq + i];
        CHECK(close(got, lse_want[i], kSafety * tol_lse[i], "lse"),
              "lse[b=%lld,h=%lld,i=%d] = %.9g, want %.9g", (long long)b, (long long)h, i, got,
              lse_want[i]);
        for (int d = 0; d < D; ++d) {
          const double g = to_float(pr.out.at<T>(b, h, i, d));
          CHECK(close(g, ov[i * D + d], kSafety * tol_out[i * D + d], "out"),
                "out[b=%lld,h=%lld,i=%d,d=%d] = %.9g, want %.9g", (long long)b, (long long)h, i, d, g,
                ov[i * D + d]);
        }
      }
      // backward
      for (int i = 0; i < Tq; ++i) {
        const int last = i + offset;
        double delta_i = 0, err_delta = 0;
        for (int d = 0; d < D; ++d) {
          delta_i += dov[i * D + d] * ov[i * D + d];
          const double err_out = kSafety * tol_out[i * D + d] + kFp32 * std::fabs(ov[i * D + d]);
          err_delta += std::fabs(dov[i * D + d]) * err_out;
        }
        for (int j = 0; j < Tk; ++j) {
          const size_t ij = static_cast<size_t>(i) * Tk + j;
          if (j > last) {
            dP[ij] = dPabs[ij] = dS[ij] = eDS[ij] = rP[ij] = 0;
            continue;
          }
          double dp = 0, abs_dp = 0;
          for (int d = 0; d < D; ++d) {
            dp += dov[i * D + d] * vv[j * D + d];
            abs_dp += std::fabs(dov[i * D + d] * vv[j * D + d]);
          }
          dP[ij] = dp;
          dPabs[ij] = abs_dp;
          dS[ij] = P[ij] * (dp - delta_i);
          // P as the kernel recomputes it: from its scores and its lse
          rP[ij] = kFp32 * Sabs[ij] + kSafety * tol_lse[i] + kFp32;
          eDS[ij] = P[ij] * (kFp32 * abs_dp + err_delta) + rP[ij] * P[ij] * std::fabs(dp - delta_i) +
                    (up + kFp32) * std::fabs(dS[ij]) + sub;
        }
      }
      for (int i = 0; i < Tq; ++i)
        for (int d = 0; d < D; ++d) {
          double want = 0, tol = 0;
          for (int j = 0; j <= i + offset; ++j) {
            const size_t ij = static_cast<size_t>(i) * Tk + j;
            want += dS[ij] * kv[j * D + d];
            tol += eDS[ij] * std::fabs(kv[j * D + d]);
          }
          want *= scale;
          tol = tol * scale + u * std::fabs(want);
          const double g = to_float(pr.dq.at<T>(b, h, i, d));
          CHECK(close(g, want, kSafety * tol + 1e-7, "dq"),
                "dq[b=%lld,h=%lld,i=%d,d=%d] = %.9g, want %.9g", (long long)b, (long long)h, i, d, g,
                want);
        }
      for (int j = 0; j < Tk; ++j)
        for (int d = 0; d < D; ++d) {
          double want_k = 0, tol_k = 0, want_v = 0, tol_v = 0;
          for (int i = std::max(0, j - offset); i < Tq; ++i) {
            const size_t ij = static_cast<size_t>(i) * Tk + j;
            want_k += dS[ij] * qv[i * D + d];
            tol_k += eDS[ij] * std::fabs(qv[i * D + d]);
            want_v += P[ij] * dov[i * D + d];
            tol_v += ((rP[ij] + up + kFp32) * P[ij] + sub) * std::fabs(dov[i * D + d]);
          }
          want_k *= scale;
          tol_k = tol_k * scale + u * std::fabs(want_k);
          tol_v += u * std::fabs(want_v);
          const double gk = to_float(pr.dk.at<T>(b, h, j, d)), gv = to_float(pr.dv.at<T>(b, h, j, d));
          CHECK(close(gk, want_k, kSafety * tol_k + 1e-7, "dk"),
                "dk[b=%lld,h=%lld,j=%d,d=%d] = %.9g, want %.9g", (long long)b, (long long)h, j, d, gk,
                want_k);
          CHECK(close(gv, want_v, kSafety * tol_v + 1e-7, "dv"),
                "dv[b=%lld,h=%lld,j=%d,d=%d] = %.9g, want %.9g", (long long)b, (long long)h, j, d, gv,
                want_v);
        }
    }
  }
  return "";
}

std::string run_one(const Case& c) {
  worst_ratio = 0;
  worst_where = "-";
  if (c.dtype == "f32") return run_case<float>(c);
  if (c.dtype == "f16") return run_case<__half>(c);
  return run_case<__nv_bfloat16>(c);
}

// --verbose: the "ok" line adds the case's largest error / tolerance and where
std::string worst_note() {
  return harness::format(" (largest error / tolerance: %.3g, %s)", worst_ratio, worst_where.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  bool report_launches = false, verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--report-launches") {
      report_launches = true;
    } else if (arg == "--verbose") {
      verbose = true;
    } else {
      std::fprintf(stderr, "usage: %s [--report-launches] [--verbose] < cases\n", argv[0]);
      return 2;
    }
  }
  return harness::run_cases(parse_case, run_one, report_launches, verbose ? worst_note : nullptr);
}
