"""How a run went: metrics.jsonl (one JSON object per step or evaluation), the loss curve
(loss.png), and model FLOPs utilization (MFU) against the GPU's peak.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

# dense bf16 tensor-core peak FLOP/s by GPU name, for MFU
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
              "A10G": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}



def flops_per_token(model, block_size: int) -> float:
    """Training FLOPs per token: 6 N for the matmuls of the weights, plus attention's
    12 L H Q T (forward and backward of QK^T and AV), as in the PaLM paper's appendix B."""
    n = model.num_params()
    c = getattr(model, "config", None)
    if not hasattr(c, "n_layer"):
        return 6.0 * n
    return 6.0 * n + 12.0 * c.n_layer * c.n_embd * block_size



def peak_flops(device) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)



class MetricsLog:
    """metrics.jsonl of a run directory and the records written so far (rank 0 only).

    `open` keeps the records of a resumed run up to its checkpoint's step, or starts an empty
    file; the file is rewritten through a temporary one, so a crash cannot lose the curve."""

    def __init__(self, path: Path, records: list[dict]):
        self.path, self.records = path, records

    @classmethod
    def open(cls, path: Path, keep_until: int | None) -> MetricsLog:
        records = []
        if keep_until is not None and path.is_file():  # keep the curve up to the checkpoint
            records = [r for r in read_records(path) if r["step"] <= keep_until]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json_line(r) for r in records))
        os.replace(tmp, path)
        return cls(path, records)

    def append(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json_line(record))

    def evals(self) -> list[dict]:
        return [r for r in self.records if "val_loss" in r]


def read_records(path: Path) -> list[dict]:
    """metrics.jsonl's records; a line torn by a crash mid-write is dropped, not an error."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records



def json_line(record: dict) -> str:
    """One metrics.jsonl line. A non-finite number (a diverged loss) is written as null: bare
    NaN / Infinity, which json.dumps writes by default, is not JSON and strict parsers reject it."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"



def plot_losses(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    def y(value):  # null in metrics.jsonl (a non-finite number): a gap in the curve
        return math.nan if value is None else value

    steps = [r["step"] for r in records if "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [y(r["loss"]) for r in records if "loss" in r], lw=0.8, alpha=0.6, label="train (step)")
    evals = [r for r in records if "val_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [y(r["train_loss"]) for r in evals], "o-", label="train (eval)")
        ax.plot([r["step"] for r in evals], [y(r["val_loss"]) for r in evals], "o-", label="val (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    handles, labels = ax.get_legend_handles_labels()
    scores = [r for r in records if "hellaswag_acc_norm" in r]
    if scores:  # accuracy on its own axis, on the right
        ax2 = ax.twinx()
        (line,) = ax2.plot([r["step"] for r in scores], [r["hellaswag_acc_norm"] for r in scores], "s--",
                           color="tab:red", label="HellaSwag acc_norm (right)")
        ax2.set_ylabel("HellaSwag acc_norm (0.25: chance)")
        handles, labels = handles + [line], labels + [line.get_label()]
    ax.legend(handles, labels)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

