// harness.h: what every harness (an op's emulator_harness.cpp beside its tests, the engine's
// selftest/selftest_harness.cpp) shares: element type conversions, guarded buffers, the CHECK
// macro, reading a case's "key=value" words, and the loop that runs the cases read from stdin
// and reports them (see a harness's header comment for the protocol). Each harness includes it
// once, after emu.h.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "emu.h"

namespace harness {

// ---- element types ----
inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> T from_float(float v);
template <> inline float from_float<float>(float v) { return v; }
template <> inline __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Unit roundoff of T: the relative error of rounding a result to T.
template <typename T> double unit_roundoff() {
  if (std::is_same<T, float>::value) return std::ldexp(1.0, -24);
  if (std::is_same<T, __half>::value) return std::ldexp(1.0, -11);
  return std::ldexp(1.0, -8);
}

// ---- buffers ----
// A stand-in for a device allocation, in a mapping of its own between two inaccessible pages.
// The data (n elements) starts 256-byte aligned plus `misalign` elements (cudaMalloc gives 256)
// and ends less than 256 bytes below the upper page, so an access much past either end faults.
// Every accessible byte (at least 256 below the data, the data, the rest up to the page) starts
// as `guard_byte`.
class GuardedBuffer {
 public:
  GuardedBuffer(size_t n, size_t elem_size, int misalign, uint8_t guard_byte)
      : n_(n), elem_size_(elem_size), guard_byte_(guard_byte) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t span = round_up((misalign + n) * elem_size, 256);
    inside_bytes_ = round_up(256 + span, page);
    mapping_ = static_cast<uint8_t*>(mmap(nullptr, inside_bytes_ + 2 * page, PROT_READ | PROT_WRITE,
                                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (mapping_ == MAP_FAILED || mprotect(mapping_, page, PROT_NONE) != 0 ||
        mprotect(mapping_ + page + inside_bytes_, page, PROT_NONE) != 0) {
      std::perror("harness: mmap");
      std::exit(2);
    }
    inside_ = mapping_ + page;
    data_ = inside_ + inside_bytes_ - span + misalign * elem_size;
    std::memset(inside_, guard_byte, inside_bytes_);
  }
  ~GuardedBuffer() {
    munmap(mapping_, inside_bytes_ + 2 * static_cast<size_t>(sysconf(_SC_PAGESIZE)));
  }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;

  template <typename T = void> T* data() { return reinterpret_cast<T*>(data_); }
  size_t elem_size() const { return elem_size_; }
  void fill(uint8_t byte) { std::memset(data_, byte, n_ * elem_size_); }  // 0xff: NaN
  // every byte around the data still holds the guard pattern
  bool guards_intact() const {
    for (const uint8_t* p = inside_; p < data_; ++p) if (*p != guard_byte_) return false;
    for (const uint8_t* p = data_ + n_ * elem_size_; p < inside_ + inside_bytes_; ++p) {
      if (*p != guard_byte_) return false;
    }
    return true;
  }
  std::vector<uint8_t> snapshot() const { return {inside_, inside_ + inside_bytes_}; }
  bool unchanged_since(const std::vector<uint8_t>& before) const { return snapshot() == before; }

 protected:
  static size_t round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }
  uint8_t* mapping_;
  uint8_t* inside_;  // the accessible bytes: guard, data, guard
  uint8_t* data_;
  size_t inside_bytes_, n_, elem_size_;
  uint8_t guard_byte_;
};

// ---- checks ----
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string format(const char* fmt, ...) {
  char text[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(text, sizeof text, fmt, args);
  va_end(args);
  return text;
}

// The first failed check of a case ends it with its message (in a function returning the
// case's problem as a std::string, "" when every check passes).
#define CHECK(condition, ...)                               \
  do {                                                      \
    if (!(condition)) return ::harness::format(__VA_ARGS__); \
  } while (0)

// ---- cases ----
// Reads a case line's "key=value" words into c (a struct with name, dtype and seed): name,
// dtype and seed here, every other key by set(key, value, number), which returns false for a
// key it does not know; number is the value as an integer, nullptr when it is not one. False, with
// the problem, for a word that is not understood or a dtype other than f32, f16 or bf16.
template <typename Case, typename Set>
bool parse_words(const std::string& line, Case& c, std::string& problem, Set set) {
  std::istringstream words(line);
  std::string word;
  while (words >> word) {
    const size_t eq = word.find('=');
    const std::string key = word.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : word.substr(eq + 1);
    char* end = nullptr;
    const long long number = std::strtoll(value.c_str(), &end, 10);
    const bool is_number = !value.empty() && *end == '\0';
    bool known = true;
    if (key == "name") c.name = value;
    else if (key == "dtype") c.dtype = value;
    else if (key == "seed" && is_number) c.seed = static_cast<uint64_t>(number);
    else known = set(key, value, is_number ? &number : nullptr);
    if (!known) {
      problem = "bad case word '" + word + "'";
      return false;
    }
  }
  if (c.dtype != "f32" && c.dtype != "f16" && c.dtype != "bf16") {
    problem = "dtype must be f32, f16 or bf16";
    return false;
  }
  return true;
}

// The running case, for the fault handler.
inline std::string current_case = "?";

// A memory fault ends the process: the case it happened in fails with where it was.
inline void report_fault(const char* what) {
  std::printf("FAIL %s: %s\n", current_case.c_str(), what);
  std::fflush(stdout);
}

// Runs the cases read from stdin, one per line (blank lines and # comments skipped):
// parse(line, c, problem) reads one, run(c) runs it and returns its first problem ("" when it
// passed). Prints "ok <name>" (plus ok_note(), when given) or "FAIL <name>: <problem>" per
// case, flushed, with an emulator error during the case as the problem; then "done ..." and,
// with report_launches, the launch counts. Returns the exit status: 1 when a case failed.
template <typename Case>
int run_cases(bool (*parse)(const std::string&, Case&, std::string&),
              std::string (*run)(const Case&), bool report_launches,
              std::string (*ok_note)() = nullptr) {
  emu::catch_memory_faults(report_fault);
  long cases = 0, failures = 0;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos || line[0] == '#') continue;
    Case c;
    std::string problem;
    const long errors_before = emu::error_count();
    if (parse(line, c, problem)) {
      current_case = c.name;
      emu::seed(c.seed);
      problem = run(c);
    }
    if (emu::error_count() != errors_before) {  // the likelier cause of whatever else failed
      const std::string then = problem.empty() ? "" : "; then " + problem;
      problem = std::string("emulator error: ") + emu::last_error() + then;
    }
    ++cases;
    if (problem.empty()) {
      std::printf("ok %s%s\n", c.name.c_str(), ok_note ? ok_note().c_str() : "");
    } else {
      ++failures;
      std::printf("FAIL %s: %s\n", c.name.c_str(), problem.c_str());
    }
    std::fflush(stdout);
  }
  std::printf("done cases=%ld failures=%ld emu_errors=%ld\n", cases, failures, emu::error_count());
  if (report_launches) emu::report_launches();
  return failures > 0 || emu::error_count() > 0;
}

}  // namespace harness
