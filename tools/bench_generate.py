"""Generation speed: toygpt (KV cache; float32 and int8) vs transformers' GPT2LMHeadModel.generate
and CTranslate2, and cache vs none.

CPU mode (the default): fp32, 2 threads, GPT-2 small shape with seeded random weights, a 16-token
prompt, greedy decoding. Both models hold the same weights, and their tokens are checked to be
identical before anything is timed. Reported: tokens/s (medians over --repeats), and the ratios
    toygpt / transformers at 128 new tokens        (goal >= 1.5)
    toygpt cache / toygpt no cache at 256 new tokens  (goal >= 5)
The timings include the prefill of the prompt, as a user waiting for text sees them.
Also printed: the memory floor, the bytes of weights a decoding step reads over the bandwidth of
a plain sum over 512 MiB measured in the same run, and the largest ratio to transformers that
floor allows.

CTranslate2 rows (what a user would pick for fast CPU decoding): when `ctranslate2` is installed
(`pip install ctranslate2`; a benchmark dependency, not a package one) and GPT-2's vocabulary
files are in ../shared/data/gpt2, the same weights are saved as a transformers directory,
converted by CTranslate2's own converter to float32 and int8, and decoded greedily with the same
prompt and threads. The float32 tokens must equal transformers' before anything is timed; for
int8 the share of identical tokens is printed. Without it the rows are skipped, with the reason.
The CPU rows go to benchmarks/results/generate_cpu.csv with the CPU's model name.

CUDA mode (`--device cuda`): bf16, batch 1 and 32, toygpt tokens/s (new tokens over all rows per
second), appended to benchmarks/results/generate.csv with GPU, torch version, date and commit.

    python tools/bench_generate.py                # CPU table
    python tools/bench_generate.py --device cuda  # GPU rows into the CSV
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from benchlib import append_csv, cpu_model, git_commit
from toygpt import GPT, GPTConfig
from toygpt.hf import hf_to_toygpt, load_checked
from toygpt.quantize import quantize

REPO = Path(__file__).resolve().parents[1]
CSV_PATH = REPO / "benchmarks" / "results" / "generate.csv"
CPU_CSV_PATH = REPO / "benchmarks" / "results" / "generate_cpu.csv"
GPT2_VOCAB = REPO.parent / "shared" / "data" / "gpt2"


def ctranslate2_generators(hf, threads: int, folder: Path):
    """{"float32": Generator, "int8": Generator} converted by CTranslate2 from `hf`'s weights, and
    the id -> token table; or (None, why) when CTranslate2 or GPT-2's vocabulary is absent."""
    try:
        import ctranslate2
    except ImportError:
        return None, "CTranslate2 rows skipped: pip install ctranslate2 to add them"
    encoder, merges = GPT2_VOCAB / "encoder.json", GPT2_VOCAB / "vocab.bpe"
    if not (encoder.is_file() and merges.is_file()):
        return None, f"CTranslate2 rows skipped: GPT-2's encoder.json / vocab.bpe not found in {GPT2_VOCAB}"
    model_dir = folder / "transformers"
    hf.save_pretrained(model_dir)
    # the converter builds its vocabulary from the tokenizer files beside the weights
    shutil.copy(encoder, model_dir / "vocab.json")
    shutil.copy(merges, model_dir / "merges.txt")
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    generators = {}
    for quantization in ("float32", "int8"):
        out = folder / f"ct2-{quantization}"
        ctranslate2.converters.TransformersConverter(str(model_dir)).convert(str(out), quantization=quantization)
        generators[quantization] = ctranslate2.Generator(str(out), device="cpu", compute_type=quantization,
                                                         intra_threads=threads)
    id_to_token = {i: t for t, i in json.loads(encoder.read_text()).items()}
    return (generators, id_to_token), None


def make_models(seed: int, with_hf: bool):
    """Seeded random GPT-2 small: a transformers model and a toygpt model with the same weights."""
    torch.manual_seed(seed)
    config = GPTConfig.preset("gpt2")
    model = GPT(config)
    hf = None
    if with_hf:
        import transformers

        hf_config = transformers.GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head,
        )
        hf = transformers.GPT2LMHeadModel(hf_config).eval()
        load_checked(model, hf_to_toygpt(hf.state_dict(), config), where="transformers model")
    return model.eval(), hf


def timed(fn, repeats: int):
    """Run fn repeats times; returns (median seconds, last result)."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def decode_linears(model) -> list[torch.nn.Linear]:
    """The Linear layers a decoding step runs on one row each: 4 per block, then lm_head."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def gemv_floor(model, repeats: int) -> float:
    """Seconds for the matmuls of one decoding step alone: every Linear of the model (4 per
    block, then lm_head) on one row, back to back, with the model's own weights and layout.
    No implementation of a step can take less; the rest of a step is everything else."""
    linears = [(m.weight, m.bias) for m in decode_linears(model)]
    rows = {w.shape[1]: torch.randn(1, w.shape[1]) for w, _ in linears}

    def step():
        for weight, bias in linears:
            torch.nn.functional.linear(rows[weight.shape[1]], weight, bias)

    with torch.inference_mode():
        step()  # warm-up
        return timed(step, repeats * 5)[0]


def stream_bandwidth(repeats: int, mib: int = 512) -> float:
    """Bytes per second of reading a `mib` MiB fp32 tensor once (a sum), median of repeats: what
    this machine's memory delivers to torch's threads, far beyond its caches."""
    x = torch.ones(mib * 2**20 // 4)
    x.sum()  # warm-up: pages touched
    seconds = timed(x.sum, repeats * 3)[0]
    return x.numel() * 4 / seconds


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Fraction of all cores' time spent busy over the next `seconds` (Linux), else None."""

    def times():
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = times()
        time.sleep(seconds)
        total1, idle1 = times()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def progress(message):
    print("  ..", message, flush=True)


class ModulePath:
    """A decoding step through the nn.Modules (GPT.forward_cached on the one new token), in place
    of toygpt's Decoder: the row that shows what the Decoder's plain copies buy."""

    def __init__(self, model, kv_cache):
        self.model, self.kv_cache = model, kv_cache

    def step(self, token, pos):
        return self.model.forward_cached(token.view(-1, 1), self.kv_cache, pos)  # (B, vocab_size)


def bench_cpu(args):
    torch.set_num_threads(args.threads)
    # NOTE: with 2 OpenMP threads on 2 cores, any other busy process makes every parallel
    # region wait for a descheduled thread: tokens/s then drop several-fold. Say so up front.
    busy = cpu_busy()
    if busy is not None and busy > 0.1:
        print(f"warning: {100 * busy:.0f}% of the CPU was busy just before the run: other processes "
              "share it, the figures below may be far off", flush=True)
    model, hf = make_models(args.seed, with_hf=True)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=g)
    n = args.new_tokens

    def run_toygpt(new, use_cache=True):
        return model.generate(idx, new, greedy=True, use_cache=use_cache)

    def run_hf():
        with torch.inference_mode():
            return hf.generate(
                idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n,
                do_sample=False, use_cache=True, pad_token_id=0,
            )

    # correctness first: the same weights must give the same greedy tokens
    ours, theirs = run_toygpt(n), run_hf()
    progress("greedy tokens identical to transformers' generate")
    if not torch.equal(ours, theirs):
        raise SystemExit("toygpt and transformers disagree on the greedy tokens; not timing")
    t_ours, _ = timed(lambda: run_toygpt(n), args.repeats)
    progress(f"toygpt {n} new tokens: {n / t_ours:.2f} tokens/s")
    t_hf, _ = timed(run_hf, args.repeats)
    progress(f"transformers {n} new tokens: {n / t_hf:.2f} tokens/s")
    n_long = args.long_tokens
    t_cache, a = timed(lambda: run_toygpt(n_long), args.repeats)
    progress(f"toygpt cache {n_long} new tokens: {n_long / t_cache:.2f} tokens/s")
    t_nocache, b = timed(lambda: run_toygpt(n_long, use_cache=False), args.nocache_repeats)
    if not torch.equal(a, b):
        raise SystemExit("toygpt with and without the KV cache disagree on the greedy tokens")

    # what the Decoder (the blocks' forward on plain copies of the modules) buys over the same
    # steps through the nn.Modules: GPT.forward_cached on each new token
    model.decoder = lambda cache: ModulePath(model, cache)  # shadows GPT.decoder for these runs
    try:
        if not torch.equal(run_toygpt(n), ours):
            raise SystemExit("toygpt's Decoder and its modules disagree on the greedy tokens")
        t_modules, _ = timed(lambda: run_toygpt(n), args.repeats)
    finally:
        del model.decoder
    progress(f"toygpt through the modules {n} new tokens: {n / t_modules:.2f} tokens/s")

    # int8 weights (toygpt.quantize): the share of its greedy tokens that are fp32's, then its speed
    model_int8 = quantize(model, "int8")
    ours_int8 = model_int8.generate(idx, n, greedy=True)[0, args.prompt_len:]
    same_int8 = (ours_int8 == ours[0, args.prompt_len:]).float().mean().item()
    first_32 = torch.equal(ours_int8[:32], ours[0, args.prompt_len:args.prompt_len + 32])
    progress(f"toygpt int8: {100 * same_int8:.0f}% of the greedy tokens are fp32's (the first 32: "
             f"{'identical' if first_32 else 'not identical'})")
    t_int8, _ = timed(lambda: model_int8.generate(idx, n, greedy=True), args.repeats)
    progress(f"toygpt int8 {n} new tokens: {n / t_int8:.2f} tokens/s")

    # bf16 weights: fast where the CPU has native bf16 (AVX-512 BF16, AMX); elsewhere torch
    # converts in software and it is slower than fp32
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    ours_bf16 = model_bf16.generate(idx, n, greedy=True)[0, args.prompt_len:]
    same_bf16 = (ours_bf16 == ours[0, args.prompt_len:]).float().mean().item()
    progress(f"toygpt bf16: {100 * same_bf16:.0f}% of the greedy tokens are fp32's")
    t_bf16, _ = timed(lambda: model_bf16.generate(idx, n, greedy=True), args.repeats)
    progress(f"toygpt bf16 {n} new tokens: {n / t_bf16:.2f} tokens/s")

    # prefill: the time to the first token after a long prompt (matrix-matrix work, not GEMVs)
    long_prompt = torch.randint(0, model.config.vocab_size, (1, args.prefill_len), generator=g)
    t_pre, _ = timed(lambda: model.generate(long_prompt, 1, greedy=True), args.repeats)
    t_pre_int8, _ = timed(lambda: model_int8.generate(long_prompt, 1, greedy=True), args.repeats)

    def hf_prefill():
        with torch.inference_mode():
            return hf.generate(long_prompt, attention_mask=torch.ones_like(long_prompt), max_new_tokens=1,
                               min_new_tokens=1, do_sample=False, pad_token_id=0)

    t_pre_hf, _ = timed(hf_prefill, args.repeats)
    progress(f"time to the first token after {args.prefill_len} prompt tokens: toygpt {1e3 * t_pre:.0f} ms, "
             f"int8 {1e3 * t_pre_int8:.0f} ms, transformers {1e3 * t_pre_hf:.0f} ms")

    # several prompts at once: (B, T) in, B rows of new tokens out
    prompts = torch.randint(0, model.config.vocab_size, (args.batch_rows, args.prompt_len), generator=g)
    t_rows, _ = timed(lambda: model.generate(prompts, n, greedy=True), args.repeats)
    t_rows_int8, _ = timed(lambda: model_int8.generate(prompts, n, greedy=True), args.repeats)
    B = args.batch_rows

    rows = [
        ("toygpt (KV cache)", n, n / t_ours),
        ("toygpt (KV cache), steps through the modules", n, n / t_modules),
        ("transformers generate(use_cache=True)", n, n / t_hf),
        ("toygpt (KV cache)", n_long, n_long / t_cache),
        ("toygpt (no cache)", n_long, n_long / t_nocache),
        ("toygpt int8 (KV cache)", n, n / t_int8),
        ("toygpt bf16 (KV cache)", n, n / t_bf16),
        (f"toygpt, {B} prompts (all rows' tokens)", n, B * n / t_rows),
        (f"toygpt int8, {B} prompts (all rows' tokens)", n, B * n / t_rows_int8),
        (f"toygpt prefill of {args.prefill_len} (prompt tokens)", 1, args.prefill_len / t_pre),
        (f"toygpt int8 prefill of {args.prefill_len} (prompt tokens)", 1, args.prefill_len / t_pre_int8),
        (f"transformers prefill of {args.prefill_len} (prompt tokens)", 1, args.prefill_len / t_pre_hf),
    ]
    with tempfile.TemporaryDirectory() as folder:
        ct2, why = ctranslate2_generators(hf, args.threads, Path(folder))
        if ct2 is None:
            print(why, flush=True)
        else:
            generators, id_to_token = ct2
            prompt = [[id_to_token[i] for i in idx[0].tolist()]]
            want = theirs[0, args.prompt_len:].tolist()
            for quantization, generator in generators.items():
                def run_ct2(generator=generator):
                    return generator.generate_batch(prompt, max_length=n, min_length=n, sampling_topk=1,
                                                    include_prompt_in_result=False)[0].sequences_ids[0]
                got = run_ct2()
                same = sum(a == b for a, b in zip(got, want)) / n
                if quantization == "float32" and got != want:
                    raise SystemExit("CTranslate2 float32 and transformers disagree on the greedy tokens; not timing")
                progress(f"CTranslate2 {quantization}: {100 * same:.0f}% of the greedy tokens are transformers'")
                t_ct2, _ = timed(run_ct2, args.repeats)
                progress(f"CTranslate2 {quantization} {n} new tokens: {n / t_ct2:.2f} tokens/s")
                rows.append((f"CTranslate2 {quantization}", n, n / t_ct2))
    meta = {"date": datetime.date.today().isoformat(), "commit": git_commit(), "cpu": cpu_model(),
            "threads": args.threads, "torch": torch.__version__}
    append_csv(CPU_CSV_PATH, [{**meta, "provider": name, "new_tokens": new, "tokens_per_s": round(tps, 2)}
                              for name, new, tps in rows])
    print(f"GPT-2 small, fp32, CPU, {args.threads} threads, prompt {args.prompt_len} tokens, greedy, "
          f"medians of {args.repeats} (no cache: {args.nocache_repeats})")
    print(f"{'provider':40s} {'new tokens':>10s} {'tokens/s':>10s}")
    for name, new, tps in rows:
        print(f"{name:40s} {new:10d} {tps:10.2f}")
    floor = gemv_floor(model, args.repeats)
    print(f"toygpt {1e3 * t_ours / n:.1f} ms per token (prefill included); the {4 * model.config.n_layer + 1} "
          f"GEMVs of a step alone: {1e3 * floor:.1f} ms")
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in decode_linears(model))
    bandwidth = stream_bandwidth(args.repeats)
    floor_bw = weight_bytes / bandwidth
    print(f"memory floor: the step reads {weight_bytes / 1e6:.0f} MB of weights; at this machine's "
          f"{bandwidth / 1e9:.1f} GB/s that is {1e3 * floor_bw:.1f} ms per token, so no fp32 decoder can beat "
          f"transformers here by more than {t_hf / n / floor_bw:.2f}x")
    print(f"toygpt / transformers at {n} new tokens: {t_hf / t_ours:.2f}x (goal >= 1.5)")
    print(f"toygpt's Decoder / its modules at {n} new tokens: {t_modules / t_ours:.2f}x")
    print(f"KV cache / no cache at {n_long} new tokens: {t_nocache / t_cache:.2f}x (goal >= 5)")
    for name, _, tps in rows:
        if name == "CTranslate2 float32":
            print(f"toygpt fp32 / {name} at {n} new tokens: {n / t_ours / tps:.2f}x (goal >= 1.0)")
        if name == "CTranslate2 int8":
            print(f"toygpt int8 / {name} at {n} new tokens: {n / t_int8 / tps:.2f}x (goal >= 1.0)")


def bench_cuda(args):
    model, _ = make_models(args.seed, with_hf=False)
    model = model.to("cuda", dtype=torch.bfloat16)
    gpu = torch.cuda.get_device_name()
    commit = git_commit(default="")
    rows = []
    for batch in args.batches:
        idx = torch.randint(0, model.config.vocab_size, (batch, args.prompt_len), device="cuda")
        model.generate(idx, 8, greedy=True)  # warm-up: kernels built and loaded
        t, _ = timed(lambda idx=idx: model.generate(idx, args.new_tokens, greedy=True), args.repeats)
        tps = batch * args.new_tokens / t
        print(f"gpt2 bf16 {gpu} batch {batch}: {tps:.1f} tokens/s ({args.new_tokens / t:.1f} per row)")
        rows.append({
            "date": datetime.date.today().isoformat(), "commit": commit, "gpu": gpu,
            "torch": torch.__version__, "model": "gpt2", "dtype": "bf16", "batch": batch,
            "prompt_tokens": args.prompt_len, "new_tokens": args.new_tokens,
            "tokens_per_s": f"{tps:.1f}", "tokens_per_s_per_row": f"{args.new_tokens / t:.1f}",
        })
    append_csv(CSV_PATH, rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--long-tokens", type=int, default=256, help="new tokens for cache vs no cache")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nocache-repeats", type=int, default=1, help="the no-cache run is slow on CPU")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefill-len", type=int, default=512, help="CPU: the prompt of the time-to-first-token row")
    p.add_argument("--batch-rows", type=int, default=8, help="CPU: prompts in the batched-generation row")
    args = p.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device")
        bench_cuda(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
