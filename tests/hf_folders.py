"""Copies of committed Hugging Face fixture folders with an edited config.json, for tests
that check how the loader reads one config key without committing another fixture."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable


def edited_copy(source: Path, dest: Path, edit: Callable[[dict], None]) -> Path:
    """Copy folder `source` to `dest` and pass its config.json through edit(dict) (in place)."""
    shutil.copytree(source, dest)
    cfg = json.loads((dest / "config.json").read_text())
    edit(cfg)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest
