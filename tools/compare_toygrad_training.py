"""toygrad-train-gpt's run beside a torch.autograd GPT: same initial weights, same batches.

    python tools/compare_toygrad_training.py ../shared/data/tinyshakespeare/input.txt --steps 300 \
        --compare toygpt --csv losses.csv

Every flag of `toygrad-train-gpt`, plus --compare: `toygpt` (toygpt's GPT on toykernels' ops)
or `plain` (tools/plain_gpt.py, torch's own LayerNorm and attention). The torch model trains
with the same recipe (torch.optim.AdamW, torch.nn.utils.clip_grad_norm_); both losses are
printed per step, and the largest difference at the end: the curves agree to float round-off,
far inside the batch-to-batch noise, the end-to-end check that every toygrad backward rule is
right. The comparison lives here, not in toygrad: toygrad imports neither toygpt nor tools/.
"""

from __future__ import annotations

import sys

from plain_gpt import PlainGPT
from toygrad.demo import run_command
from toygrad.tensor.train_gpt import build_parser, run_args


def toygpt_gpt(config):
    from toygpt.model import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=config.vocab_size, block_size=config.block_size, n_layer=config.n_layer,
                         n_head=config.n_head, n_embd=config.n_embd, dropout=config.dropout, bias=config.bias))


REFERENCES = {"toygpt": toygpt_gpt, "plain": PlainGPT}


def main(argv=None) -> int:
    def _main():
        parser = build_parser()
        parser.prog = "compare_toygrad_training"
        parser.add_argument("--compare", choices=sorted(REFERENCES), default="toygpt",
                            help="the torch.autograd GPT trained alongside")
        args = parser.parse_args(argv)
        return run_args(args, reference=REFERENCES[args.compare], reference_name=args.compare)

    return run_command("compare_toygrad_training", _main)


if __name__ == "__main__":
    sys.exit(main())
