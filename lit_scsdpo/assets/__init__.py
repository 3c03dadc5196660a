"""Assets shipped with the package (the tiny pretrained model of the embedded default).

A model path written ``asset:<name>`` (e.g. in ``configs/tiny/*.yaml``) resolves to the
folder ``lit_scsdpo/assets/<name>``, which ``AutoModelForCausalLM.from_pretrained`` loads
like any local path.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSET_PREFIX = "asset:"
ASSET_DIR = Path(__file__).resolve().parent


def resolve_model_path(name_or_path: str) -> str:
    """Turn ``asset:<name>`` into the shipped folder and ``~/...`` into the home folder's path
    (configs name the converted SmolLM2 as ``~/.cache/...``); return other paths/hub ids unchanged."""
    if name_or_path.startswith("~"):
        return os.path.expanduser(name_or_path)
    if not name_or_path.startswith(ASSET_PREFIX):
        return name_or_path
    name = name_or_path[len(ASSET_PREFIX):]
    path = ASSET_DIR / name
    if not (path / "config.json").is_file():
        available = sorted(p.name for p in ASSET_DIR.iterdir() if (p / "config.json").is_file())
        raise FileNotFoundError(
            f"model_name_or_path={name_or_path!r}: no shipped asset {name!r} in {ASSET_DIR} "
            f"(available: {available or 'none'}; build it with scripts/build_tiny_asset.py)"
        )
    return str(path)
