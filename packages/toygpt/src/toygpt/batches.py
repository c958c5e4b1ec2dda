"""The batches a training run reads: windows of a `toygpt prepare` directory's train.bin and
val.bin, drawn from (seed, step) by toygpt.data, each rank its own share of a step's batch.

Any object with the same methods (train_batch, eval_batch, check, tokenizer, vocab_size) can
stand in for TokenBatches, e.g. the addition demo's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from toygpt.data import batch_offsets, get_batch, load_tokens, read_meta, sha256_of
from toygpt.errors import ToyGPTError

if TYPE_CHECKING:
    from toygpt.config import TrainConfig


class TokenBatches:
    """Batches of a `toygpt prepare` directory, for one rank of `world_size`."""

    def __init__(self, data_dir: str | Path, cfg: TrainConfig, rank: int = 0, world_size: int = 1):
        from toygpt.tokenizers import load_tokenizer

        self.meta = read_meta(data_dir)
        self.splits = {s: load_tokens(data_dir, s) for s in ("train", "val")}
        tok_path = Path(data_dir) / "tokenizer.json"
        if not tok_path.is_file():
            raise ToyGPTError(f"{tok_path} not found: {data_dir} is not a `toygpt prepare` output")
        recorded = self.meta.get("tokenizer_sha256")  # absent in directories of older versions
        if recorded is not None and sha256_of(tok_path) != recorded:
            raise ToyGPTError(f"tokenizer {tok_path} is not the one {data_dir}/meta.json was written with "
                              "(its sha256 differs): the tokenizer does not match the data")
        self.tokenizer = load_tokenizer(tok_path)
        self.tokenizer_path = tok_path
        self.vocab_size = self.tokenizer.vocab_size
        if self.meta.get("vocab_size") != self.vocab_size:
            raise ToyGPTError(f"tokenizer {tok_path} has {self.vocab_size} ids but {data_dir}/meta.json "
                              f"says {self.meta.get('vocab_size')}: the tokenizer does not match the data")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size

    def check(self, block_size: int, batch_size: int) -> None:
        for split, tokens in self.splits.items():
            if len(tokens) <= block_size:
                raise ToyGPTError(f"block_size {block_size} is longer than the data: {split}.bin holds "
                                  f"{len(tokens)} tokens, a window needs {block_size + 1}")
            if len(tokens) - block_size < batch_size:
                raise ToyGPTError(f"a batch of {batch_size} windows cannot be drawn from {split}.bin: it "
                                  f"has {len(tokens) - block_size} distinct windows of {block_size + 1} tokens")

    def train_batch(self, step: int, micro_step: int, block_size: int, device):
        tokens = self.splits["train"]
        offsets = batch_offsets(len(tokens), block_size, self.cfg.batch_size, self.cfg.seed, step,
                                micro_step, self.rank, self.world_size, self.cfg.grad_accum,
                                order=self.cfg.batch_order)
        return get_batch(tokens, offsets, block_size, device)

    def eval_batch(self, split: str, k: int, block_size: int, device):
        tokens = self.splits[split]
        stream = {"train": 1, "val": 2}[split]  # fixed batches, apart from the training ones
        offsets = batch_offsets(len(tokens), block_size, self.cfg.batch_size, self.cfg.seed, k, 0,
                                self.rank, self.world_size, stream=stream)
        return get_batch(tokens, offsets, block_size, device)

