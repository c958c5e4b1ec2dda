// selftest_harness.cpp: runs the emulator's test kernels (selftest.cu) and checks each against
// an answer computed here, on the host, without the emulator's help: a scalar matmul for
// mma.sync, the PTX ISA's fragment formula for ldmatrix, plain loops for the rest.
//
//   selftest_emu [--report-launches] < cases
//
// One case per input line, "key=value" words: name=<text>, test=<a name of run_one below>,
// blocks=<n> (where a test launches a grid), seed=<n> (the inputs and the scheduler's choices).
// Prints "ok <name>" or "FAIL <name>: <first problem>" per case, then "done ..." (harness.h's
// protocol, that of every harness). The tests named missing_*, read_past_the_end,
// unmodelled_ptx and divergent_shuffle run kernels with a bug: their cases must FAIL, each for
// its own reason (tests/kernels/test_emulator_engine.py checks which).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_fp16.h>

#include "emu.h"
#include "harness.h"
#include "selftest.h"

namespace {

using harness::GuardedBuffer;

struct Case {
  std::string name = "?", dtype = "f32", test;
  int blocks = 4;
  uint64_t seed = 1;
};

bool parse_case(const std::string& line, Case& c, std::string& problem) {
  auto set = [&c](const std::string& key, const std::string& value, const long long* number) {
    if (key == "test") c.test = value;
    else if (key == "blocks" && number != nullptr) c.blocks = static_cast<int>(*number);
    else return false;
    return true;
  };
  return harness::parse_words(line, c, problem, set);
}

// A guarded buffer (harness.h) of n T's: NaN inside (0xff bytes), NaN around.
template <typename T> struct Buffer : GuardedBuffer {
  explicit Buffer(size_t n) : GuardedBuffer(n, sizeof(T), 0, 0xff) { fill(0xff); }
  T& operator[](size_t i) { return data<T>()[i]; }
  T* ptr() { return data<T>(); }
};

// Small integers: every sum and product below is exact in fp32 (and in fp16 inputs).
template <typename T> void fill_integers(Buffer<T>& b, size_t n, int range, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> pick(-range, range);
  for (size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same<T, __half>::value) b[i] = __float2half_rn(static_cast<float>(pick(rng)));
    else b[i] = static_cast<T>(pick(rng));
  }
}

uint16_t bits(__half h) {
  uint16_t b;
  std::memcpy(&b, &h, sizeof b);
  return b;
}

#define CHECK_LAUNCH(call, want)                                                          \
  do {                                                                                    \
    const cudaError_t err_ = (call);                                                      \
    CHECK(err_ == (want), "%s returned error %d, want %d", #call, int(err_), int(want)); \
  } while (0)

std::string barrier(const Case& c, std::mt19937_64& rng, bool with_barrier) {
  const int n = selftest::kRotateThreads, total = c.blocks * n;
  Buffer<float> in(total), out(total);
  fill_integers(in, total, 100, rng);
  CHECK_LAUNCH(selftest::block_rotate(in.ptr(), out.ptr(), c.blocks, with_barrier), cudaSuccess);
  for (int b = 0; b < c.blocks; ++b) {
    for (int t = 0; t < n; ++t) {
      const float want = in[b * n + (t + 37) % n] - 2.0f * in[b * n + n - 1 - t];
      CHECK(out[b * n + t] == want, "out[%d, %d] = %g, want %g", b, t, out[b * n + t], want);
    }
  }
  return "";
}

std::string shuffles(const Case& c, std::mt19937_64& rng) {
  const int total = c.blocks * selftest::kShuffleThreads;
  Buffer<int> in(total), sums(total), rotated(total), broadcast(total);
  fill_integers(in, total, 1000, rng);
  CHECK_LAUNCH(selftest::warp_shuffles(in.ptr(), sums.ptr(), rotated.ptr(), broadcast.ptr(), c.blocks),
               cudaSuccess);
  for (int i = 0; i < total; ++i) {
    const int warp_base = i / 32 * 32, lane = i % 32;
    const int block = i / selftest::kShuffleThreads, warp = i % selftest::kShuffleThreads / 32;
    int sum = 0;
    for (int k = 0; k < 32; ++k) sum += in[warp_base + k];
    CHECK(sums[i] == sum, "sums[%d] = %d, want %d (__shfl_xor_sync)", i, sums[i], sum);
    const int next = in[warp_base + (lane + 3) % 32], lead = in[warp_base + (block + warp) % 32];
    CHECK(rotated[i] == next, "rotated[%d] = %d, want %d (__shfl_sync)", i, rotated[i], next);
    CHECK(broadcast[i] == lead, "broadcast[%d] = %d, want %d (__shfl_sync)", i, broadcast[i], lead);
  }
  return "";
}

// out[b, t] == in[b, n - 1 - t], or (ran false) out untouched: still NaN
std::string check_reversed(Buffer<float>& in, Buffer<float>& out, int blocks, int n, bool ran) {
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < n; ++t) {
      const float got = out[b * n + t], want = in[b * n + n - 1 - t];
      if (ran) CHECK(got == want, "out[%d, %d] = %g, want %g", b, t, got, want);
      else CHECK(std::isnan(got), "out[%d, %d] = %g after a launch that failed", b, t, got);
    }
  }
  return "";
}

std::string dynamic_shared(const Case& c, std::mt19937_64& rng) {
  const int n = 96;  // three warps, the buffer exactly n floats
  Buffer<float> in(c.blocks * n), out(c.blocks * n);
  fill_integers(in, c.blocks * n, 100, rng);
  CHECK_LAUNCH(selftest::reverse_dynamic(in.ptr(), out.ptr(), c.blocks, n, n * sizeof(float)),
               cudaSuccess);
  return check_reversed(in, out, c.blocks, n, true);
}

// 64 KB of dynamic shared memory: refused until cudaFuncSetAttribute raises the 48 KB default;
// a limit above 227 KB (sm_90's) is refused.
std::string dynamic_shared_limit(const Case& c, std::mt19937_64& rng) {
  const int n = 64;
  const size_t bytes = 64 * 1024;
  Buffer<float> in(c.blocks * n), out(c.blocks * n);
  fill_integers(in, c.blocks * n, 100, rng);
  CHECK_LAUNCH(selftest::reverse_dynamic(in.ptr(), out.ptr(), c.blocks, n, bytes), cudaErrorInvalidValue);
  std::string problem = check_reversed(in, out, c.blocks, n, false);
  CHECK(problem.empty(), "%s", problem.c_str());
  CHECK_LAUNCH(selftest::set_reverse_dynamic_limit(228 * 1024), cudaErrorInvalidValue);
  CHECK_LAUNCH(selftest::set_reverse_dynamic_limit(static_cast<int>(bytes)), cudaSuccess);
  CHECK_LAUNCH(selftest::reverse_dynamic(in.ptr(), out.ptr(), c.blocks, n, bytes), cudaSuccess);
  problem = check_reversed(in, out, c.blocks, n, true);
  CHECK_LAUNCH(selftest::set_reverse_dynamic_limit(48 * 1024), cudaSuccess);  // as it was
  return problem;
}

std::string bad_launch() {
  Buffer<float> out(2048);
  CHECK_LAUNCH(selftest::bad_block_size(out.ptr()), cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaSuccess, "cudaGetLastError did not clear the launch error");
  for (int i = 0; i < 2048; ++i) CHECK(std::isnan(out[i]), "out[%d] written by a failed launch", i);
  return "";
}

// D (16 x 8) = A (16 x 16) B (16 x 8) + C, a scalar triple loop in double.
std::vector<double> matmul(Buffer<__half>& a, Buffer<__half>& b, Buffer<float>* c) {
  std::vector<double> d(16 * 8);
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 8; ++j) {
      double sum = c ? (*c)[i * 8 + j] : 0.0;
      for (int k = 0; k < 16; ++k) sum += double(__half2float(a[i * 16 + k])) * __half2float(b[k * 8 + j]);
      d[i * 8 + j] = sum;
    }
  }
  return d;
}

std::string mma(std::mt19937_64& rng, bool through_ldmatrix) {
  Buffer<__half> a(16 * 16), b(16 * 8);
  Buffer<float> c(16 * 8), d(16 * 8);
  fill_integers(a, 16 * 16, 3, rng);
  fill_integers(b, 16 * 8, 3, rng);
  fill_integers(c, 16 * 8, 8, rng);
  if (through_ldmatrix) CHECK_LAUNCH(selftest::ldmatrix_mma(a.ptr(), b.ptr(), d.ptr()), cudaSuccess);
  else CHECK_LAUNCH(selftest::mma_m16n8k16(a.ptr(), b.ptr(), c.ptr(), d.ptr()), cudaSuccess);
  const std::vector<double> want = matmul(a, b, through_ldmatrix ? nullptr : &c);
  for (int i = 0; i < 16 * 8; ++i) {
    CHECK(d[i] == want[i], "d[%d, %d] = %g, want %g", i / 8, i % 8, d[i], want[i]);
  }
  return "";
}

// Lane l, register m: matrix m's row l / 4, columns 2 (l % 4) and + 1 (the low half first);
// with .trans, of the transposed matrix.
std::string ldmatrix(std::mt19937_64& rng, bool trans) {
  Buffer<__half> m(32 * 8);
  Buffer<uint32_t> out(32 * 4);
  fill_integers(m, 32 * 8, 1000, rng);
  CHECK_LAUNCH(selftest::ldmatrix_x4(m.ptr(), out.ptr(), trans), cudaSuccess);
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      const int row = lane / 4, col = 2 * (lane % 4);
      auto at = [&](int i, int j) { return bits(trans ? m[(8 * r + j) * 8 + i] : m[(8 * r + i) * 8 + j]); };
      const uint32_t want = at(row, col) | static_cast<uint32_t>(at(row, col + 1)) << 16;
      const uint32_t got = out[lane * 4 + r];
      CHECK(got == want, "lane %d register %d = 0x%08x, want 0x%08x", lane, r, got, want);
    }
  }
  return "";
}

std::string cp_async(const Case& c, std::mt19937_64& rng, bool wait) {
  const int n = 4 * selftest::kCopyThreads, total = c.blocks * n;
  Buffer<float> in(total), out(total);
  fill_integers(in, total, 100, rng);
  CHECK_LAUNCH(selftest::cp_async_copy(in.ptr(), out.ptr(), c.blocks, wait), cudaSuccess);
  for (int i = 0; i < total; ++i) {
    const float want = i % n >= n - 2 ? 0.0f : in[i];  // src-size 8 of 16: zero-filled
    CHECK(out[i] == want, "out[%d, %d] = %g, want %g", i / n, i % n, out[i], want);
  }
  return "";
}

std::string shared_windows(std::mt19937_64& rng) {
  Buffer<float> in(16), out(16);
  fill_integers(in, 16, 100, rng);
  for (const bool reversed : {false, true}) {
    out.fill(0xff);
    CHECK_LAUNCH(selftest::shared_windows(in.ptr(), out.ptr(), reversed), cudaSuccess);
    for (int i = 0; i < 16; ++i) {
      CHECK(out[i] == in[i], "out[%d] = %g, want %g (array %d, reversed %d)", i, out[i], in[i],
            i / 4, int(reversed));
    }
  }
  return "";
}

std::string read_past_the_end() {
  Buffer<float> in(32), out(32);
  CHECK_LAUNCH(selftest::read_past_the_end(in.ptr(), out.ptr(), 32), cudaSuccess);
  return "";  // never reached: the read faults
}

std::string unmodelled_ptx() {
  Buffer<float> out(32);
  CHECK_LAUNCH(selftest::unmodelled_ptx(out.ptr()), cudaSuccess);
  return "";  // the emulator's error fails the case
}

std::string divergent_shuffle(std::mt19937_64& rng) {
  Buffer<int> in(32), out(32);
  fill_integers(in, 32, 1000, rng);
  CHECK_LAUNCH(selftest::divergent_shuffle(in.ptr(), out.ptr()), cudaSuccess);
  return "";  // the emulator's error fails the case
}

std::string run_one(const Case& c) {
  std::mt19937_64 rng(c.seed);
  const std::string& t = c.test;
  if (t == "barrier") return barrier(c, rng, true);
  if (t == "missing_barrier") return barrier(c, rng, false);
  if (t == "shuffles") return shuffles(c, rng);
  if (t == "dynamic_shared") return dynamic_shared(c, rng);
  if (t == "dynamic_shared_limit") return dynamic_shared_limit(c, rng);
  if (t == "bad_launch") return bad_launch();
  if (t == "mma") return mma(rng, false);
  if (t == "ldmatrix_mma") return mma(rng, true);
  if (t == "ldmatrix") return ldmatrix(rng, false);
  if (t == "ldmatrix_trans") return ldmatrix(rng, true);
  if (t == "cp_async") return cp_async(c, rng, true);
  if (t == "shared_windows") return shared_windows(rng);
  if (t == "missing_cp_async_wait") return cp_async(c, rng, false);
  if (t == "read_past_the_end") return read_past_the_end();
  if (t == "unmodelled_ptx") return unmodelled_ptx();
  if (t == "divergent_shuffle") return divergent_shuffle(rng);
  return "unknown test '" + t + "'";
}

}  // namespace

int main(int argc, char** argv) {
  bool report_launches = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--report-launches") {
      report_launches = true;
    } else {
      std::fprintf(stderr, "usage: %s [--report-launches] < cases\n", argv[0]);
      return 2;
    }
  }
  return harness::run_cases(parse_case, run_one, report_launches);
}
