"""GPT-2 weights in transformers' format, both ways.

A transformers GPT-2 directory is `config.json` (a GPT2Config) plus `model.safetensors` (or
`pytorch_model.bin`, or sharded with an index). toygpt's modules already carry the checkpoint's
names, so conversion is small:

- GPT-2 was written with "Conv1D" layers that store the weight as (in, out), the transpose of
  nn.Linear's (out, in): `c_attn`, `c_proj` (both) and `c_fc` weights are transposed.
- The attention mask buffers (`attn.bias`, `attn.masked_bias`) in old checkpoints are dropped.
- Keys may or may not start with `transformer.` (GPT2Model vs GPT2LMHeadModel checkpoints);
  a tied `lm_head.weight` is `wte` and is neither needed nor written (an untied one is both,
  with `tie_word_embeddings: false`, which transformers reads too).
- GPT-2 has every bias but lm_head's: a toygpt model without some of them is written with
  zeros there, which compute the same function.

`save_pretrained` writes that format itself with safetensors (transformers is not needed),
recording toygpt's own fields (block_size, dropout, the biases, init) under "toygpt" in
config.json. One choice has no place in transformers' GPT-2: a bias on the output projection
(GPTConfig.lm_head_bias, dx-dtran/MyGPT's head). Such a model is written with model_type
"toygpt" (toygpt reads it; transformers refuses the type instead of dropping the bias).
A toygpt checkpoint directory is such a directory plus an optional `tokenizer.json`.

Hub names ('gpt2', 'gpt2-medium', or any GPT-2 repo id) resolve through the Hugging Face cache
with huggingface_hub; offline and not cached is one ToyGPTError, after a short probe, no hang.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from toygpt import net
from toygpt.errors import ToyGPTError
from toygpt.model_config import GPTConfig

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
DROPPED_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not parameters
_PROBE_SECONDS = 3.0
ACTIVATIONS_FROM_HF = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
TOYGPT_MODEL_TYPE = "toygpt"  # a GPT-2 with a bias on lm_head: not a transformers GPT2LMHeadModel


# ----------------------------------------------------------------------------------------------
# config.json <-> GPTConfig


def config_from_hf(cfg: dict, where: str = "config.json") -> GPTConfig:
    """GPTConfig from a GPT2Config dict; refuses settings toygpt's blocks do not implement."""
    if cfg.get("model_type", "gpt2") not in ("gpt2", TOYGPT_MODEL_TYPE):
        raise ToyGPTError(f"{where}: model_type is {cfg.get('model_type')!r}; toygpt loads GPT-2 (model_type 'gpt2')")
    act = cfg.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS_FROM_HF:
        raise ToyGPTError(f"{where}: activation_function {act!r} is not supported (toygpt has tanh GELU, "
                          "'gelu_new', and 'relu')")
    n_embd = cfg.get("n_embd", 768)
    if cfg.get("n_inner") not in (None, 4 * n_embd):
        raise ToyGPTError(f"{where}: n_inner={cfg['n_inner']} is not supported (toygpt's MLP is 4 * n_embd)")
    if cfg.get("scale_attn_by_inverse_layer_idx", False) or not cfg.get("scale_attn_weights", True):
        raise ToyGPTError(f"{where}: only GPT-2's standard attention scaling 1/sqrt(head_dim) is supported")
    if abs(cfg.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise ToyGPTError(f"{where}: layer_norm_epsilon={cfg['layer_norm_epsilon']} is not supported (1e-5)")
    extra = cfg.get("toygpt", {})
    try:
        return GPTConfig(
            vocab_size=cfg.get("vocab_size", 50257),
            block_size=extra.get("block_size", cfg.get("n_positions", 1024)),
            n_layer=cfg.get("n_layer", 12),
            n_head=cfg.get("n_head", 12),
            n_embd=n_embd,
            dropout=extra.get("dropout", cfg.get("resid_pdrop", 0.0)),
            bias=extra.get("bias", True),
            activation=ACTIVATIONS_FROM_HF[act],
            tie_embeddings=cfg.get("tie_word_embeddings", True),
            qkv_bias=extra.get("qkv_bias"),
            lm_head_bias=extra.get("lm_head_bias", False),
            init=extra.get("init", "gpt2"),
        )
    except ToyGPTError as e:
        raise ToyGPTError(f"{where}: {e}") from None


def config_to_hf(config: GPTConfig) -> dict:
    cfg = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": {"gelu": "gelu_new", "relu": "relu"}[config.activation],
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": 0.0,  # toygpt applies no dropout to attention probabilities
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_embeddings,
        "toygpt": {"block_size": config.block_size, "dropout": config.dropout, "bias": config.bias,
                   "qkv_bias": config.qkv_bias, "lm_head_bias": config.lm_head_bias, "init": config.init},
    }
    if config.lm_head_bias:
        cfg["model_type"] = TOYGPT_MODEL_TYPE
        cfg["architectures"] = []
    if config.vocab_size > 50256:  # GPT-2's <|endoftext|>
        cfg["bos_token_id"] = cfg["eos_token_id"] = 50256
    return cfg


# ----------------------------------------------------------------------------------------------
# state dicts


def hf_to_toygpt(state: dict, config: GPTConfig) -> dict:
    """transformers GPT-2 state dict -> toygpt's names and layouts."""
    out = {}
    for key, tensor in state.items():
        name = key.removeprefix("transformer.")
        if name.endswith(DROPPED_BUFFERS):
            continue
        if name.startswith("lm_head."):
            if name == "lm_head.weight" and config.tie_embeddings:
                continue  # tied to wte
            out[name] = tensor
            continue
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
        if name.endswith(".bias") and not has_bias(name, config):
            continue  # a toygpt model without this bias, saved for transformers, carries zeros
        out["transformer." + name] = tensor
    return out


def has_bias(name: str, config: GPTConfig) -> bool:
    """Whether the toygpt model of `config` has the bias `name` (a transformer.* parameter)."""
    return config.qkv_bias if name.endswith("attn.c_attn.bias") else config.bias


def toygpt_to_hf(model) -> dict:
    """toygpt state dict -> transformers' names and layouts (zeros for biases toygpt lacks)."""
    out = {}
    state = model.state_dict()
    for name, tensor in state.items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue  # tied: safetensors stores a tensor once, and transformers re-ties it
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()  # Linear (out, in) -> Conv1D (in, out)
        out[name] = tensor.detach().to("cpu").contiguous()
        bias = name.removesuffix(".weight") + ".bias"
        if (name.startswith("transformer.") and name.endswith(".weight") and bias not in state
                and not name.endswith(("wte.weight", "wpe.weight"))):
            # transformers' GPT-2 has every Linear's and LayerNorm's bias: zeros compute the same function
            width = out[name].shape[-1]  # Conv1D (in, out) and LayerNorm (C,): the last dim
            out[bias] = torch.zeros(width, dtype=tensor.dtype)
    return out


def load_state_dict(path: Path) -> dict:
    """Tensors of a transformers directory: model.safetensors, sharded safetensors, or .bin."""
    if (path / "model.safetensors").is_file():
        return _load_safetensors(path / "model.safetensors")
    for index_name, loader in (
        ("model.safetensors.index.json", _load_safetensors),
        ("pytorch_model.bin.index.json", _load_bin),
    ):
        if (path / index_name).is_file():
            weight_map = json.loads((path / index_name).read_text())["weight_map"]
            state = {}
            for shard in sorted(set(weight_map.values())):
                state.update(loader(path / shard))
            return state
    if (path / "pytorch_model.bin").is_file():
        return _load_bin(path / "pytorch_model.bin")
    raise ToyGPTError(
        f"{path}: no weights found (expected model.safetensors, pytorch_model.bin, or a sharded index)"
    )


def _load_safetensors(file: Path) -> dict:
    from safetensors.torch import load_file

    if not file.is_file():  # a shard the index names
        raise ToyGPTError(f"weights file {file} not found")
    try:
        return load_file(file)
    except Exception as e:  # SafetensorError (a bad header), OSError: the file is the user's to fix
        raise ToyGPTError(f"weights file {file} is corrupt or truncated ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None


def _load_bin(file: Path) -> dict:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ToyGPTError(f"weights file {file} not found") from None
    except Exception as e:  # a truncated zip, pickled code weights_only refuses, garbage bytes
        raise ToyGPTError(f"weights file {file} is corrupt or truncated ({type(e).__name__})") from None


# ----------------------------------------------------------------------------------------------
# from_pretrained / save_pretrained


def from_pretrained(cls, name_or_path, **overrides):
    path = Path(os.fspath(name_or_path)).expanduser()
    if not path.is_dir():
        if path.exists():
            raise ToyGPTError(f"{name_or_path}: not a directory (pass a model directory or a hub name like 'gpt2')")
        if os.sep in str(name_or_path) and not _looks_like_repo_id(str(name_or_path)):
            raise ToyGPTError(f"{name_or_path}: no such directory (and not a hub name like 'gpt2' or 'org/name')")
        path = resolve_hub(str(name_or_path))
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ToyGPTError(f"{path}: no config.json (not a transformers / toygpt model directory)")
    try:
        cfg = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ToyGPTError(f"{config_file}: not valid JSON ({e})") from None
    config = config_from_hf(cfg, where=str(config_file))
    for key, value in overrides.items():
        if key not in ("dropout",):
            raise ToyGPTError(f"from_pretrained: can only override 'dropout', got {key}={value!r}")
        setattr(config, key, value)
    config.__post_init__()
    model = cls(config)
    state = hf_to_toygpt(load_state_dict(path), config)
    load_checked(model, state, where=str(path))
    tokenizer_file = path / "tokenizer.json"
    if tokenizer_file.is_file() and "type" in _json_keys(tokenizer_file):
        from toygpt.tokenizers import load_tokenizer

        model.tokenizer = load_tokenizer(tokenizer_file)
    return model


def _json_keys(file: Path) -> dict:
    # transformers' fast-tokenizer tokenizer.json has no "type" at the top: not ours, ignore it
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def load_checked(model, state: dict, where: str) -> None:
    """load_state_dict with errors that name the parameter and both shapes."""
    expected = {k: v for k, v in model.state_dict().items()
                if not (k == "lm_head.weight" and model.config.tie_embeddings)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise ToyGPTError(f"{where}: checkpoint lacks parameter(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        raise ToyGPTError(f"{where}: checkpoint has parameter(s) the config does not: {unexpected[:5]}")
    for name, param in expected.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise ToyGPTError(
                f"{where}: parameter {name} has shape {tuple(state[name].shape)} in the checkpoint "
                f"but {tuple(param.shape)} in the config"
            )
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(state[name])


def save_pretrained(model, path) -> None:
    from safetensors.torch import save_file

    if getattr(model, "quantized", None):  # toygpt.quantize: an inference copy of a float model
        raise ToyGPTError(f"save_pretrained: the model is {model.quantized}-quantized for decoding; save the "
                          "float model it was made from (and quantize again after loading)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2) + "\n")
    save_file(toygpt_to_hf(model), path / "model.safetensors", metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------------
# hub names through the Hugging Face cache


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def _hub_reachable(timeout: float = _PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the hub (HF_ENDPOINT) opens within `timeout` seconds."""
    return net.reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


def resolve_hub(name: str) -> Path:
    """Local snapshot directory of a hub repo: from the cache, else downloaded when online.

    Only config.json and the safetensors weights are fetched; a repo that has no safetensors
    (old checkpoints) gets its pytorch_model*.bin files in a second pass.
    """
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise ToyGPTError(
            f"{name!r} is not a local directory, and loading hub names needs huggingface_hub "
            "(pip install 'toygpt[hf]'); or pass a local model directory"
        ) from None
    patterns = ["*.json", "*.safetensors"]
    bin_patterns = ["*.json", "pytorch_model*.bin"]
    for allow in (patterns, bin_patterns):
        try:
            path = Path(snapshot_download(name, allow_patterns=allow, local_files_only=True))
        except Exception:  # LocalEntryNotFoundError, an invalid repo id, and the like
            continue
        if _has_weights(path):
            return path
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not _hub_reachable():
        raise ToyGPTError(
            f"model {name!r} is not in the Hugging Face cache and the hub is "
            f"{'disabled (HF_HUB_OFFLINE)' if offline else 'unreachable (offline)'}: download it on a "
            "connected machine (huggingface-cli download), or pass a local directory with "
            "config.json + model.safetensors, e.g. GPT.from_pretrained('/path/to/gpt2')"
        )
    try:
        path = Path(snapshot_download(name, allow_patterns=patterns))
        if not _has_weights(path):
            path = Path(snapshot_download(name, allow_patterns=bin_patterns))
        return path
    except Exception as e:
        raise ToyGPTError(f"could not download {name!r} from the Hugging Face hub: {e}") from None


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
