// ptx.cpp: the inline PTX that the emulated kernels use (see README.md).
//
// transform.py turns `asm volatile("text" : outputs : inputs)` into emu::ptx(text, operands).
// The text is parsed once (per distinct string) into an instruction and its operands (%n
// references, {vectors}, [addresses], immediates); the instruction runs on the operands'
// values. Modelled, as the PTX ISA documents them:
//
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32  d, a, b, c
//   ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared{::cta}.b16  r, [p]
//   cp.async.{ca,cg}.shared{::cta}.global [dst], [src], cp-size{, src-size}
//   cp.async.commit_group, cp.async.wait_group N, cp.async.wait_all
//
// Anything else is an emulator error. mma and ldmatrix are warp-synchronous (all 32 lanes,
// emu::warp_collective) and compute every lane's registers from all lanes' operands with the
// fragment layouts of the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point
// type", "ldmatrix"), independently of how the kernel believes they are laid out.

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "emu.h"

namespace emu {

PtxOperand make_ptx_operand(const char* constraint, bool output, bool floating, int size, void* ptr,
                            const void* value) {
  PtxOperand op;
  const char* c = constraint;
  if (output) {
    if (*c != '=' && *c != '+') error("asm output constraint \"%s\": expected = or +", constraint);
    op.read = *c == '+';
    if (*c == '=' || *c == '+') ++c;
  }
  op.constraint = *c;
  if (c[0] == '\0' || c[1] != '\0' || std::strchr("frlhdn", c[0]) == nullptr) {
    error("asm constraint \"%s\" is not modelled (f, r, l, h, d, n)", constraint);
  }
  op.output = output;
  op.floating = floating;
  op.size = size;
  op.ptr = ptr;
  std::memcpy(&op.bits, value, static_cast<size_t>(size));
  return op;
}

namespace {

// ---- parsing ----

// One operand of an instruction: %n, {%a, %b, ...}, [%n] or an integer.
struct Arg {
  enum Kind { Reg, Vector, Address, Immediate } kind = Reg;
  std::vector<int> regs;  // operand numbers (Reg: one, Address: one)
  long long value = 0;    // Immediate
};

enum class Op { Unknown, Mma, LdMatrix, CpAsync, CommitGroup, WaitGroup, WaitAll };

struct Instruction {
  std::string text, opcode;
  std::vector<std::string> modifiers;  // the opcode split at '.', after the first word
  std::vector<Arg> args;
  Op op = Op::Unknown;
  std::string problem;  // why it cannot run ("" if it can)
  // mma: bf16 (else f16); ldmatrix: matrices, transposed
  bool bf16 = false, trans = false;
  int matrices = 0;
};

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

bool parse_reg(const std::string& word, int& n) {
  const std::string w = trim(word);
  if (w.size() < 2 || w[0] != '%') return false;
  char* end = nullptr;
  n = static_cast<int>(std::strtol(w.c_str() + 1, &end, 10));
  return *end == '\0' && end != w.c_str() + 1;
}

std::vector<std::string> split_top(const std::string& s, char sep) {
  std::vector<std::string> parts;
  int depth = 0;
  std::string cur;
  for (char ch : s) {
    if (ch == '{' || ch == '[') ++depth;
    if (ch == '}' || ch == ']') --depth;
    if (ch == sep && depth == 0) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  parts.push_back(cur);
  return parts;
}

bool parse_arg(const std::string& word, Arg& arg) {
  const std::string w = trim(word);
  if (w.empty()) return false;
  if (w.front() == '{' && w.back() == '}') {
    arg.kind = Arg::Vector;
    for (const std::string& part : split_top(w.substr(1, w.size() - 2), ',')) {
      int n;
      if (!parse_reg(part, n)) return false;
      arg.regs.push_back(n);
    }
    return true;
  }
  if (w.front() == '[' && w.back() == ']') {
    int n;
    if (!parse_reg(w.substr(1, w.size() - 2), n)) return false;  // no [%n+offset]
    arg.kind = Arg::Address;
    arg.regs.push_back(n);
    return true;
  }
  int n;
  if (parse_reg(w, n)) {
    arg.kind = Arg::Reg;
    arg.regs.push_back(n);
    return true;
  }
  char* end = nullptr;
  arg.value = std::strtoll(w.c_str(), &end, 0);
  arg.kind = Arg::Immediate;
  return *end == '\0';
}

bool has(const std::vector<std::string>& mods, const char* m) {
  for (const std::string& x : mods) {
    if (x == m) return true;
  }
  return false;
}

// mods (the opcode's words after the first) are exactly `want`, each entry a set of choices
// separated by '|' ("" among them: optional), in order.
bool modifiers_are(const std::vector<std::string>& mods, const std::vector<std::string>& want) {
  size_t k = 0;
  for (const std::string& choices : want) {
    bool matched = false, optional = false;
    size_t start = 0;
    while (start <= choices.size()) {
      size_t bar = choices.find('|', start);
      if (bar == std::string::npos) bar = choices.size();
      const std::string choice = choices.substr(start, bar - start);
      if (choice.empty()) optional = true;
      else if (k < mods.size() && mods[k] == choice) matched = true;
      start = bar + 1;
    }
    if (matched) ++k;
    else if (!optional) return false;
  }
  return k == mods.size();
}

Instruction parse(const char* text) {
  Instruction ins;
  ins.text = text;
  std::string body = trim(ins.text);
  // one instruction, ending in ';'
  const size_t semi = body.find(';');
  if (semi == std::string::npos || !trim(body.substr(semi + 1)).empty()) {
    ins.problem = "not a single instruction ending in ';'";
    return ins;
  }
  body = trim(body.substr(0, semi));
  const size_t space = body.find_first_of(" \t\n");
  ins.opcode = body.substr(0, space);
  const std::string rest = space == std::string::npos ? "" : trim(body.substr(space));
  std::vector<std::string> words = split_top(ins.opcode, '.');
  const std::string name = words[0];
  ins.modifiers.assign(words.begin() + 1, words.end());
  if (!rest.empty()) {
    for (const std::string& w : split_top(rest, ',')) {
      Arg arg;
      if (!parse_arg(w, arg)) {
        ins.problem = "cannot read operand '" + trim(w) + "'";
        return ins;
      }
      ins.args.push_back(arg);
    }
  }
  const auto& m = ins.modifiers;
  auto shape = [&](std::vector<Arg::Kind> kinds, std::vector<size_t> sizes) {
    if (ins.args.size() != kinds.size()) return false;
    for (size_t i = 0; i < kinds.size(); ++i) {
      if (ins.args[i].kind != kinds[i]) return false;
      if (kinds[i] == Arg::Vector && ins.args[i].regs.size() != sizes[i]) return false;
    }
    return true;
  };
  using K = Arg::Kind;
  if (name == "mma") {
    const bool f16 =
        modifiers_are(m, {"sync", "aligned", "m16n8k16", "row", "col", "f32", "f16", "f16", "f32"});
    const bool bf16 =
        modifiers_are(m, {"sync", "aligned", "m16n8k16", "row", "col", "f32", "bf16", "bf16", "f32"});
    if (!f16 && !bf16) {
      ins.problem = "only mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32";
    } else if (!shape({K::Vector, K::Vector, K::Vector, K::Vector}, {4, 4, 2, 4})) {
      ins.problem = "mma m16n8k16 operands: {4 f32}, {4 b32}, {2 b32}, {4 f32}";
    }
    ins.op = Op::Mma;
    ins.bf16 = bf16;
  } else if (name == "ldmatrix") {
    if (!modifiers_are(m, {"sync", "aligned", "m8n8", "x1|x2|x4", "trans|", "shared|shared::cta",
                           "b16"})) {
      ins.problem = "only ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16 is modelled";
    }
    ins.matrices = has(m, "x4") ? 4 : has(m, "x2") ? 2 : 1;
    ins.trans = has(m, "trans");
    const size_t registers = static_cast<size_t>(ins.matrices);
    if (ins.problem.empty() && !shape({K::Vector, K::Address}, {registers, 0})) {
      ins.problem = "ldmatrix operands: {one b32 per matrix}, [shared address]";
    }
    ins.op = Op::LdMatrix;
  } else if (name == "cp" && !m.empty() && m[0] == "async") {
    if (modifiers_are(m, {"async", "commit_group"})) {
      ins.op = Op::CommitGroup;
      if (!ins.args.empty()) ins.problem = "cp.async.commit_group takes no operands";
    } else if (modifiers_are(m, {"async", "wait_group"})) {
      ins.op = Op::WaitGroup;
      if (ins.args.size() != 1 || (ins.args[0].kind != K::Immediate && ins.args[0].kind != K::Reg)) {
        ins.problem = "cp.async.wait_group takes one immediate";
      }
    } else if (modifiers_are(m, {"async", "wait_all"})) {
      ins.op = Op::WaitAll;
    } else if (modifiers_are(m, {"async", "ca|cg", "shared|shared::cta", "global"})) {
      ins.op = Op::CpAsync;
      const bool ok3 = shape({K::Address, K::Address, K::Immediate}, {0, 0, 0});
      const bool ok4 = ins.args.size() == 4 && ins.args[0].kind == K::Address &&
                       ins.args[1].kind == K::Address && ins.args[2].kind == K::Immediate &&
                       (ins.args[3].kind == K::Reg || ins.args[3].kind == K::Immediate);
      if (!ok3 && !ok4) ins.problem = "cp.async operands: [dst], [src], cp-size{, src-size}";
      else if (m[1] == "cg" && ins.args[2].value != 16) ins.problem = "cp.async.cg copies 16 bytes";
    } else {
      ins.problem = "this cp.async form is not modelled";
    }
  } else {
    ins.problem = "instruction not modelled";
  }
  if (ins.op == Op::Unknown && ins.problem.empty()) ins.problem = "instruction not modelled";
  return ins;
}

// Parsed instructions, by the address of their text (a string literal) and by the text.
const Instruction& parsed(const char* text) {
  static std::unordered_map<const char*, const Instruction*> by_address;
  static std::map<std::string, std::unique_ptr<Instruction>> by_text;
  const auto found = by_address.find(text);
  if (found != by_address.end()) return *found->second;
  std::unique_ptr<Instruction>& slot = by_text[text];
  if (!slot) slot = std::make_unique<Instruction>(parse(text));
  by_address[text] = slot.get();
  return *slot;
}

std::string one_line(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '\n' ? ' ' : c;
  return trim(out);
}

// ---- operand access ----

struct Operands {
  const Instruction& ins;
  const PtxOperand* ops;
  size_t n;
  bool ok = true;

  const PtxOperand* get(int k, char constraint, bool want_output, const char* role) {
    if (k < 0 || static_cast<size_t>(k) >= n) {
      fail("%%%d does not exist (%zu operands)", k, n);
      return nullptr;
    }
    const PtxOperand& op = ops[k];
    if (want_output && !op.output) return fail("%%%d (%s) must be an output", k, role), nullptr;
    const bool is_float = constraint == 'f' || constraint == 'd';
    const int size = constraint == 'l' || constraint == 'd' ? 8 : constraint == 'h' ? 2 : 4;
    if (op.constraint != constraint || op.floating != is_float || op.size != size) {
      fail("%%%d (%s) must be a \"%c\" operand of %d bytes (it is \"%c\", %d bytes)", k, role,
           constraint, size, op.constraint, op.size);
      return nullptr;
    }
    return &op;
  }
  // the value of operand k: an input, or a "+" output's current value
  uint64_t value(int k, char constraint, const char* role) {
    const PtxOperand* op = get(k, constraint, false, role);
    if (op == nullptr) return 0;
    if (!op->output) return op->bits;
    if (!op->read) {
      fail("%%%d (%s) is read but is a write-only (\"=\") output", k, role);
      return 0;
    }
    uint64_t bits = 0;
    std::memcpy(&bits, op->ptr, static_cast<size_t>(op->size));
    return bits;
  }
  void* output(int k, char constraint, const char* role) {
    const PtxOperand* op = get(k, constraint, true, role);
    return op == nullptr ? nullptr : op->ptr;
  }
  long long immediate(const Arg& a, const char* role) {
    if (a.kind == Arg::Immediate) return a.value;
    const PtxOperand* op = get(a.regs[0], 'n', false, role);
    return op == nullptr ? 0 : static_cast<long long>(op->bits);
  }
  void fail(const char* format, ...) __attribute__((format(printf, 2, 3)));
};

void Operands::fail(const char* format, ...) {
  char text[300];
  va_list args;
  va_start(args, format);
  std::vsnprintf(text, sizeof text, format, args);
  va_end(args);
  if (ok) error("inline PTX \"%s\": %s", one_line(ins.text).c_str(), text);
  ok = false;
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 ----

struct MmaLane {
  float* d[4];
  uint32_t a[4], b[2];
  float c[4];
};

float half_bits(uint16_t h, bool bf16) {
  if (bf16) return __bfloat162float(__nv_bfloat16{h});
  return __half2float(__half{h});
}

// The fragment layouts of "Matrix Fragments for mma.m16n8k16 with floating point type", PTX
// ISA: groupID = lane >> 2, threadID_in_group = lane % 4;
//   A (16x16, row): a_i (i = 0..7; a0,a1 in the low/high half of the first register, ...) at
//     row groupID for i in {0,1,4,5}, else groupID + 8; column 2 threadID_in_group + (i & 1),
//     + 8 for i >= 4;
//   B (16x8, col): b_i (i = 0..3) at row 2 threadID_in_group + (i & 1), + 8 for i >= 2;
//     column groupID;
//   C, D (16x8, f32): c_i at row groupID for i < 2, else groupID + 8; column
//     2 threadID_in_group + (i & 1).
template <bool BF16> void complete_mma(void* const* lanes) {
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const MmaLane& m = *static_cast<const MmaLane*>(lanes[l]);
    const int g = l >> 2, t = l % 4;
    for (int i = 0; i < 8; ++i) {
      const uint16_t h = static_cast<uint16_t>(m.a[i / 2] >> (16 * (i & 1)));
      const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = half_bits(h, BF16);
    }
    for (int i = 0; i < 4; ++i) {
      const uint16_t h = static_cast<uint16_t>(m.b[i / 2] >> (16 * (i & 1)));
      B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] = half_bits(h, BF16);
    }
    for (int i = 0; i < 4; ++i) C[i < 2 ? g : g + 8][2 * t + (i & 1)] = m.c[i];
  }
  float D[16][8];
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      float acc = C[r][n];  // products of 16-bit values are exact in float; fp32 sums
      for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][n];
      D[r][n] = acc;
    }
  }
  for (int l = 0; l < 32; ++l) {
    const MmaLane& m = *static_cast<const MmaLane*>(lanes[l]);
    const int g = l >> 2, t = l % 4;
    for (int i = 0; i < 4; ++i) {
      if (m.d[i] != nullptr) *m.d[i] = D[i < 2 ? g : g + 8][2 * t + (i & 1)];
    }
  }
}

void run_mma(const Instruction& ins, Operands& ops) {
  MmaLane lane{};
  const Arg &d = ins.args[0], &a = ins.args[1], &b = ins.args[2], &c = ins.args[3];
  for (int i = 0; i < 4; ++i) {
    lane.c[i] = 0;
    const uint64_t cb = ops.value(c.regs[i], 'f', "C");
    std::memcpy(&lane.c[i], &cb, 4);
    lane.a[i] = static_cast<uint32_t>(ops.value(a.regs[i], 'r', "A"));
  }
  for (int i = 0; i < 2; ++i) lane.b[i] = static_cast<uint32_t>(ops.value(b.regs[i], 'r', "B"));
  for (int i = 0; i < 4; ++i) lane.d[i] = static_cast<float*>(ops.output(d.regs[i], 'f', "D"));
  if (!ops.ok) for (float*& p : lane.d) p = nullptr;
  warp_collective(WarpOp::Mma, &ins, &lane, ins.bf16 ? &complete_mma<true> : &complete_mma<false>);
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16 ----

struct LdMatrixLane {
  const Instruction* ins;
  uint32_t* r[4];
  uint32_t address;
};

// "ldmatrix", PTX ISA: lanes 8i .. 8i+7 give the addresses of rows 0..7 of matrix i (16 bytes
// each, 16-byte aligned); lane l receives, of each matrix i, row l / 4, elements 2 (l % 4) and
// 2 (l % 4) + 1 (low half first) in register i. .trans: the matrix is read column-major, so lane l
// receives elements (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4).
void complete_ldmatrix(void* const* lanes) {
  const Instruction& ins = *static_cast<const LdMatrixLane*>(lanes[0])->ins;
  uint16_t M[4][8][8];
  for (int i = 0; i < ins.matrices; ++i) {
    for (int row = 0; row < 8; ++row) {
      const uint32_t address = static_cast<const LdMatrixLane*>(lanes[8 * i + row])->address;
      const void* p = shared_pointer(address, 16, "ldmatrix row");
      if (p != nullptr && address % 16 != 0) {
        error("%s: ldmatrix row address 0x%x (lane %d) is not 16-byte aligned",
              collective_context(), address, 8 * i + row);
        p = nullptr;
      }
      if (p == nullptr) std::memset(M[i][row], 0xff, 16);
      else std::memcpy(M[i][row], p, 16);
    }
  }
  for (int l = 0; l < 32; ++l) {
    const LdMatrixLane& lane = *static_cast<const LdMatrixLane*>(lanes[l]);
    for (int i = 0; i < ins.matrices; ++i) {
      uint16_t lo, hi;
      if (ins.trans) {
        lo = M[i][2 * (l % 4)][l / 4];
        hi = M[i][2 * (l % 4) + 1][l / 4];
      } else {
        lo = M[i][l / 4][2 * (l % 4)];
        hi = M[i][l / 4][2 * (l % 4) + 1];
      }
      if (lane.r[i] != nullptr) *lane.r[i] = uint32_t{lo} | uint32_t{hi} << 16;
    }
  }
}

void run_ldmatrix(const Instruction& ins, Operands& ops) {
  LdMatrixLane lane{};
  lane.ins = &ins;
  for (int i = 0; i < ins.matrices; ++i) {
    lane.r[i] = static_cast<uint32_t*>(ops.output(ins.args[0].regs[i], 'r', "destination"));
  }
  lane.address = static_cast<uint32_t>(ops.value(ins.args[1].regs[0], 'r', "shared address"));
  if (!ops.ok) for (uint32_t*& p : lane.r) p = nullptr;
  warp_collective(WarpOp::LdMatrix, &ins, &lane, &complete_ldmatrix);
}

// ---- cp.async ----

void run_cp_async(const Instruction& ins, Operands& ops) {
  const uint32_t dst =
      static_cast<uint32_t>(ops.value(ins.args[0].regs[0], 'r', "shared destination"));
  uint64_t src_bits = ops.value(ins.args[1].regs[0], 'l', "global source");
  const int cp_size = static_cast<int>(ins.args[2].value);
  int src_size = cp_size;
  if (ins.args.size() == 4) {
    const Arg& s = ins.args[3];
    src_size = s.kind == Arg::Immediate ? static_cast<int>(s.value)
                                        : static_cast<int>(ops.value(s.regs[0], 'r', "src-size"));
  }
  if (!ops.ok) return;
  const void* src;
  std::memcpy(&src, &src_bits, sizeof src);
  cp_async(dst, src, cp_size, src_size);
}

}  // namespace

void ptx(const char* text, std::initializer_list<PtxOperand> operands) {
  const Instruction& ins = parsed(text);
  if (!ins.problem.empty()) {
    return error("inline PTX \"%s\": %s", one_line(ins.text).c_str(), ins.problem.c_str());
  }
  Operands ops{ins, operands.begin(), operands.size()};
  switch (ins.op) {
    case Op::Mma: return run_mma(ins, ops);
    case Op::LdMatrix: return run_ldmatrix(ins, ops);
    case Op::CpAsync: return run_cp_async(ins, ops);
    case Op::CommitGroup: return cp_async_commit();
    case Op::WaitGroup: {
      const long long n = ops.immediate(ins.args[0], "N");
      if (ops.ok) cp_async_wait(static_cast<int>(n));
      return;
    }
    case Op::WaitAll:
      cp_async_commit();
      return cp_async_wait(0);
    case Op::Unknown: break;
  }
  error("inline PTX \"%s\": instruction not modelled", one_line(ins.text).c_str());
}

}  // namespace emu
