"""Tensors computed once and kept on disk (background keys, key statistics), safe against kills and damage."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)


def cached_tensor(path: Path, compute: Callable[[], torch.Tensor], device: torch.device | str = "cpu"
                  ) -> torch.Tensor:
    """``path`` if it holds a readable tensor, else ``compute()`` written there atomically (a kill mid-write
    leaves no partial file); an unreadable file is named in a warning and rebuilt."""
    if path.exists():
        try:
            return torch.load(path, map_location=device)
        except Exception as exc:  # truncated or foreign file: torch raises several error types
            log.warning("cache file %s is unreadable (%s); computing it again", path, exc)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(value.cpu(), tmp)
    tmp.replace(path)
    return value
