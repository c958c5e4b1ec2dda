"""`toygpt train`: nanoGPT's training loop, as a function tests can call.

The settings are toygpt.config's (TrainConfig, presets, resuming), the device, DDP, autocast and
RNG toygpt.runtime's, the batches toygpt.batches', metrics.jsonl, the loss curve and MFU
toygpt.metrics'. This file is the loop, which reads in order (`Trainer.run`), per optimizer step:
set the learning rate (linear warmup, then cosine decay to min_lr); run `grad_accum` micro-batches
forward and backward (under bf16 autocast on CUDA), syncing DDP gradients on the last one only;
clip the gradient norm; step AdamW. Every `eval_interval` steps: evaluate (mean train/val loss
over `eval_iters` fixed batches), check that nothing diverged, save a checkpoint, then report
(the metrics record, a text sample, the loss curve).

Distributed: under `torchrun` the model is wrapped in DDP. Each rank draws its own share of the
step's global batch (data.py), so N ranks with grad_accum g follow the same loss curve as one
process with grad_accum N * g. Rank 0 logs and saves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from toygpt import checkpoint
from toygpt.batches import TokenBatches
from toygpt.config import (  # noqa: F401 (TrainConfig's home is toygpt.config; importable here too)
    MODEL_SHAPE_FIELDS,
    SEED_RANGE,
    TrainConfig,
    config_from_args,
    make_config,
    presets_help,
    resumed_config,
)
from toygpt.data import data_identity
from toygpt.errors import ToyGPTError
from toygpt.flags import add_flags
from toygpt.generation import GPT2_VOCAB_SIZES
from toygpt.metrics import MetricsLog, flops_per_token, peak_flops, plot_losses
from toygpt.runtime import (
    autocast_context,
    autocast_dtype,
    rng_state,
    set_rng_state,
    setup_distributed,
)


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr (nanoGPT's schedule)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= decay_iters:
        return cfg.min_lr
    ratio = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def build_model(cfg: TrainConfig, vocab_size: int):
    if cfg.preset == "bigram":
        from toygpt.bigram import BigramConfig, BigramLanguageModel

        return BigramLanguageModel(BigramConfig(vocab_size=vocab_size, block_size=cfg.block_size))
    from toygpt.model import GPT, GPTConfig

    shape = {k: getattr(cfg, k) for k in MODEL_SHAPE_FIELDS}
    return GPT(GPTConfig(vocab_size=vocab_size, **{k: v for k, v in shape.items() if v is not None}))


def train(cfg: TrainConfig, batches=None, log=print, given: set[str] | None = None) -> dict:
    """Train as `cfg` says; returns {"model", "losses", "evals", "run_dir"}.

    `batches` defaults to TokenBatches(cfg.data); any object with the same methods (train_batch,
    eval_batch, check, tokenizer, vocab_size) works, e.g. the addition demo's.

    With cfg.resume the run continues with its checkpoint's own TrainConfig (`resumed_config`:
    `given` names the fields the caller set, as the CLI's flags; None means every field of cfg
    that is not None), on the same data (the checkpoint records its meta.json). A fresh run
    refuses a run directory that holds a checkpoint unless cfg.overwrite; then the old
    checkpoint is deleted first, before the curve, so a crash leaves one run's files, never a
    mix. A checkpoint is only ever written with finite weights and evaluation losses: a run
    that diverges stops with an error naming the last good one. metrics.jsonl holds one JSON
    object per line; a non-finite number in it is written as null.
    """
    return Trainer(cfg, batches, log, given).run()


class Trainer:
    """One training run: `__init__` sets it up (resumed or fresh), `run` is the loop."""

    def __init__(self, cfg: TrainConfig, batches=None, log=print, given: set[str] | None = None):
        for name in ("batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters"):
            if getattr(cfg, name) < 1:
                raise ToyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
        self.log = log
        self.rank, _, self.world_size, self.device = setup_distributed(cfg.device)
        self.device_type = torch.device(self.device).type
        self.master = self.rank == 0
        self.run_dir = Path(cfg.out)
        self.ckpt_dir = self.run_dir / "ckpt"
        cfg, state, where = self._resume_or_start(cfg, given)
        self.cfg, self.state = cfg, state
        if batches is None:
            if not cfg.data:
                raise ToyGPTError("--data DIR is required (make one with `toygpt prepare`)")
            batches = TokenBatches(cfg.data, cfg, self.rank, self.world_size)
        self.batches = batches
        meta = getattr(batches, "meta", None)  # TokenBatches' meta.json; the addition demo has none
        self.identity = data_identity(meta) if isinstance(meta, dict) else None

        model = self._load_model(where) if state is not None else self._new_model()
        self.block_size = model.config.block_size
        if getattr(model.config, "vocab_size", batches.vocab_size) != batches.vocab_size:
            raise ToyGPTError(f"the checkpoint {self.ckpt_dir} has vocab_size {model.config.vocab_size} but the "
                              f"data's tokenizer has {batches.vocab_size}: they do not match")
        batches.check(self.block_size, cfg.batch_size)
        ptdtype = autocast_dtype(cfg.dtype, self.device_type)
        model.to(self.device)
        self.optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                                    self.device_type, decay_all=cfg.decay_all)
        self.autocast = autocast_context(ptdtype, self.device_type)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=ptdtype == torch.float16)
        self.start_step = 0
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.start_step = state["step"]
            set_rng_state(state["rng"][min(self.rank, len(state["rng"]) - 1)])
        else:
            torch.manual_seed(cfg.seed + self.rank)  # dropout masks differ between ranks
        # raw_model: the module itself, for evaluation, sampling and saving; model: what trains
        self.raw_model = self.model = model
        if cfg.compile:
            self.model = torch.compile(model)
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device_ids = [torch.device(self.device).index] if self.device_type == "cuda" else None
            self.model = DDP(self.model, device_ids=device_ids)
        self.metrics = self._open_metrics() if self.master else None
        self.hellaswag_examples = self._hellaswag_examples() if cfg.hellaswag_every else None
        self.good_step = self.start_step if state is not None else None  # of the checkpoint on disk

    # ---- set-up ------------------------------------------------------------------------------

    def _resume_or_start(self, cfg, given):
        """(cfg, checkpoint state or None, its directory or None): the run's own settings when
        resuming; a fresh run must not silently replace a checkpoint."""
        if cfg.resume:
            state = checkpoint.load_state(self.ckpt_dir)  # raises if absent or corrupt
            where = checkpoint.resolve(self.ckpt_dir)
            cfg, notes = resumed_config(cfg, state.get("config", {}), given, where=str(where))
            if notes and self.master:
                self.log(f"note: resuming {where} with settings changed from its run's: {'; '.join(notes)}")
            return cfg, state, where
        if checkpoint.exists(self.ckpt_dir) and not cfg.overwrite:
            raise ToyGPTError(f"{self.ckpt_dir} already holds a checkpoint: pass --resume to continue it, "
                              f"--overwrite to start afresh, or another --out")
        if cfg.lr_decay_iters is None:  # the config file records the schedule that runs
            cfg = dataclasses.replace(cfg, lr_decay_iters=cfg.max_iters)
        return cfg, None, None

    def _load_model(self, where: Path):
        """The checkpoint's model, after checking that it was trained on this data."""
        cfg, state, batches, identity = self.cfg, self.state, self.batches, self.identity
        tok_file = where / "tokenizer.json"
        tok = batches.tokenizer
        data_tok = {"type": tok.name, **tok.to_dict()} if tok is not None else None
        if tok_file.is_file() and data_tok is not None and json.loads(tok_file.read_text()) != data_tok:
            raise ToyGPTError(f"the tokenizer of checkpoint {tok_file} does not match the data's "
                              f"({getattr(batches, 'tokenizer_path', 'tokenizer')})")
        # the same tokenizer on other text (a `toygpt prepare --overwrite` since) is caught here
        recorded = state.get("data_identity")  # absent in checkpoints of older versions
        if recorded is not None and identity is not None and recorded != identity:
            differ = sorted(k for k in recorded.keys() | identity.keys() if recorded.get(k) != identity.get(k))
            raise ToyGPTError(f"the data in {cfg.data} is not the data checkpoint {where} was trained on "
                              f"(its meta.json differs in {', '.join(differ)}): pass that data with --data, "
                              "or start a new run")
        model = checkpoint.load_model(where)
        if not _all_finite(model.parameters()):  # saved by an older version, which did not check
            raise ToyGPTError(f"checkpoint {where} holds non-finite weights (nan or inf): it cannot be resumed")
        if cfg.dropout is not None and getattr(model.config, "dropout", cfg.dropout) != cfg.dropout:
            model.config.dropout = cfg.dropout  # a changed --dropout, applied (and noted above)
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = cfg.dropout
        return model

    def _new_model(self):
        torch.manual_seed(self.cfg.seed)  # the same initial weights on every rank
        return build_model(self.cfg, self.batches.vocab_size)

    def _open_metrics(self) -> MetricsLog:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ToyGPTError(f"cannot create the run directory --out {self.run_dir} ({e.strerror or e})") from None
        if self.state is None:
            # A fresh run (--overwrite, or a directory whose run never saved): what an earlier run
            # left goes, its checkpoint first. A crash from here on leaves no checkpoint beside
            # any curve but its own: the old run whole, the old curve with no checkpoint (which
            # nothing resumes), or the new run.
            checkpoint.remove(self.ckpt_dir)
            (self.run_dir / "loss.png").unlink(missing_ok=True)
        return MetricsLog.open(self.run_dir / "metrics.jsonl", self.start_step if self.state is not None else None)

    # ---- the loop ----------------------------------------------------------------------------

    def run(self) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        tokens_per_step = cfg.batch_size * self.block_size * cfg.grad_accum * self.world_size
        flops_tok, peak = flops_per_token(self.raw_model, self.block_size), peak_flops(self.device)
        bar = tqdm(range(self.start_step, cfg.max_iters), initial=self.start_step, total=cfg.max_iters,
                   disable=not (self.master and cfg.progress), dynamic_ncols=True)
        losses: list[float] = []
        t_last = time.perf_counter()
        for step in bar:
            lr = get_lr(step, cfg)
            loss = self.train_step(step, lr)
            t_now = time.perf_counter()
            dt, t_last = t_now - t_last, t_now
            losses.append(loss)
            done = step + 1
            if self.master:
                record = {"step": done, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_step / dt}
                postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tokens_per_step / dt:,.0f}"}
                if peak:
                    record["mfu"] = flops_tok * tokens_per_step / dt / (peak * self.world_size)
                    postfix["mfu"] = f"{100 * record['mfu']:.1f}%"
                bar.set_postfix(postfix, refresh=False)
                self.metrics.append(record)
            if done % cfg.eval_interval == 0 or done == cfg.max_iters:
                losses_now = self.evaluate()
                self.check_finite(losses_now, done)
                self.save(done)
                self.report(done, losses_now, bar)
                t_last = time.perf_counter()  # evaluation time is not step time
            if cfg.hellaswag_every and (done % cfg.hellaswag_every == 0 or done == cfg.max_iters):
                self.score_hellaswag(done, bar)
                t_last = time.perf_counter()
        bar.close()
        evals = self.metrics.evals() if self.master else []
        return {"model": self.raw_model, "losses": losses, "evals": evals, "run_dir": self.run_dir}

    def train_step(self, step: int, lr: float) -> float:
        """One optimizer step over grad_accum micro-batches; returns the step's mean loss."""
        cfg, optimizer = self.cfg, self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro_step in range(cfg.grad_accum):
            x, y = self.batches.train_batch(step, micro_step, self.block_size, self.device)
            # DDP all-reduces gradients in backward; only the last micro-step needs it
            sync = self.world_size == 1 or micro_step == cfg.grad_accum - 1
            with (nullcontext() if sync else self.model.no_sync()), self.autocast:
                _, loss = self.model(x, y)
                loss = loss / cfg.grad_accum  # the step's gradient is the mean over micro-batches
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if self.world_size > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= self.world_size
        step_loss = loss_sum.item()
        if not math.isfinite(step_loss):
            raise self.stop(f"loss is {step_loss}", step + 1)
        if cfg.grad_clip > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return step_loss

    @torch.no_grad()
    def evaluate(self) -> dict:
        """{"train_loss", "val_loss"}: the mean over eval_iters fixed batches of each split."""
        model = self.raw_model
        model.eval()
        out = {}
        for split in ("train", "val"):
            losses = torch.zeros(self.cfg.eval_iters, device=self.device)
            for k in range(self.cfg.eval_iters):
                x, y = self.batches.eval_batch(split, k, self.block_size, self.device)
                with self.autocast:
                    losses[k] = model(x, y)[1]
            mean = losses.mean()
            if self.world_size > 1:
                dist.all_reduce(mean)
                mean /= self.world_size
            out[f"{split}_loss"] = mean.item()
        model.train()
        return out

    def _hellaswag_examples(self) -> list[dict]:
        """This rank's share of HellaSwag's examples (every world_size-th one), read once."""
        from toygpt.data import HELLASWAG_VAL, fetch_file
        from toygpt.evaluate import read_hellaswag

        tok = self.batches.tokenizer
        if tok is None or self.batches.vocab_size not in GPT2_VOCAB_SIZES:
            raise ToyGPTError("--hellaswag-every scores English endings with GPT-2's tokenizer: the data must be "
                              f"prepared with --tokenizer gpt2 (its vocabulary has {self.batches.vocab_size} ids)")
        cfg = self.cfg
        path = (Path(cfg.hellaswag_data) if cfg.hellaswag_data
                else fetch_file("hellaswag", HELLASWAG_VAL, instead="--hellaswag-data FILE"))
        examples = read_hellaswag(path, cfg.hellaswag_limit or None)
        return examples[self.rank::self.world_size]

    @torch.no_grad()
    def score_hellaswag(self, step: int, bar) -> None:
        """acc and acc_norm over every rank's examples (as `toygpt eval hellaswag` scores them),
        logged beside the losses and drawn in the loss curve."""
        from toygpt.evaluate import hellaswag

        model = self.raw_model
        model.eval()
        with self.autocast:
            result = hellaswag(model, self.batches.tokenizer, self.hellaswag_examples, self.device)
        model.train()
        counts = torch.tensor([result["correct"], result["correct_norm"], result["examples"]],
                              dtype=torch.long, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(counts)
        correct, correct_norm, n = counts.tolist()
        if self.master:
            record = {"step": step, "hellaswag_acc": correct / n, "hellaswag_acc_norm": correct_norm / n,
                      "hellaswag_examples": n}
            self.metrics.append(record)
            (bar.write if self.cfg.progress else self.log)(
                f"step {step}: hellaswag acc {correct / n:.4f}, acc_norm {correct_norm / n:.4f} ({n} examples)")
            plot_losses(self.metrics.records, self.run_dir / "loss.png")

    def check_finite(self, losses: dict, step: int) -> None:
        """An update can leave the weights non-finite while the loss before it was finite: such
        weights are never saved over the last good checkpoint. The curve shows where it diverged."""
        diverged = _not_finite(losses, self.raw_model, self.optimizer)
        if diverged:
            if self.master:
                self.metrics.append({"step": step, **losses})
            raise self.stop(f"{diverged} (so this step is not saved)", step)

    def save(self, step: int) -> None:
        rng = [rng_state()]
        if self.world_size > 1:  # every rank's RNG, so dropout resumes exactly on each
            rng = [None] * self.world_size
            dist.all_gather_object(rng, rng_state())
        if self.master:
            checkpoint.save_checkpoint(self.ckpt_dir, self.raw_model, self.batches.tokenizer, {
                "step": step, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rng, "config": asdict(self.cfg), "world_size": self.world_size,
                "data_identity": self.identity})
        self.good_step = step

    def report(self, step: int, losses: dict, bar) -> None:
        """Rank 0: the evaluation's record, a line with a text sample, and the loss curve."""
        if not self.master:
            return
        self.metrics.append({"step": step, **losses})
        msg = f"step {step}: train loss {losses['train_loss']:.4f}, val loss {losses['val_loss']:.4f}"
        text = self.sample()
        (bar.write if self.cfg.progress else self.log)(msg + (f"\n{text}\n" if text else ""))
        plot_losses(self.metrics.records, self.run_dir / "loss.png")

    def sample(self) -> str:
        tok = self.batches.tokenizer
        if tok is None or self.cfg.sample_tokens < 1:
            return ""
        start = tok.eot_id if tok.eot_id is not None else 0
        model = self.raw_model
        with torch.random.fork_rng(devices=[self.device] if self.device_type == "cuda" else []):
            model.eval()  # sampling must not move the RNG the training run depends on
            idx = torch.full((1, 1), start, dtype=torch.long, device=self.device)
            out = model.generate(idx, self.cfg.sample_tokens, temperature=1.0, top_k=None)
            model.train()
        return tok.decode(out[0, 1:].tolist())

    def stop(self, what: str, step: int) -> ToyGPTError:
        if self.good_step is None:
            return ToyGPTError(f"{what} at step {step}: stopping; no checkpoint was saved")
        return ToyGPTError(f"{what} at step {step}: stopping; the last good checkpoint is "
                           f"{checkpoint.resolve(self.ckpt_dir)} (step {self.good_step})")


def _not_finite(ev: dict, model, optimizer) -> str | None:
    """What is not finite of an evaluation's losses, the weights and the optimizer state, or None."""
    for name, value in ev.items():
        if not math.isfinite(value):
            return f"{name.replace('_', ' ')} is {value}"
    if not _all_finite(model.parameters()):
        return "the weights hold nan or inf"
    if not _all_finite(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)):
        return "the optimizer state holds nan or inf"
    return None


def _all_finite(tensors) -> bool:
    flags = [torch.isfinite(t).all() for t in tensors]
    return not flags or bool(torch.stack(flags).all())  # one device sync, not one per tensor


# ---- the command line: `toygpt train` -------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field: --n-layer, --learning-rate, --resume/--no-resume, ..."""
    add_flags(parser, TrainConfig)
    parser.epilog = presets_help()


def run(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    try:
        # with --resume, the flags given are the changes to the run's own settings
        result = train(cfg, given=getattr(args, "_given", set()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result["evals"]:
        last = result["evals"][-1]
        print(f"done: step {last['step']}, val loss {last['val_loss']:.4f}; "
              f"checkpoint {result['run_dir'] / 'ckpt'}, curve {result['run_dir'] / 'loss.png'}")
