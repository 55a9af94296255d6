"""What a `model.name` that is neither a preset nor a .gguf file refers to: a folder, or a hub id.

A name that looks like a path (`./ckpt`, `/models/x`, `runs/r/consolidate/model`) is a
local Hugging Face directory and must exist: "not found" is the useful message, not the
hub's complaint about repository ids. A name of the hub's form (`org/name`) that is not a
local folder is looked up on the hub only when the hub can be reached: on an offline
machine transformers would retry for most of a minute and print dozens of warnings before
failing, so a short connection probe fails it at once, in one line.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from oel.errors import ModelLoadError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
"""`name` or `org/name`: what the hub accepts as a repository id."""
HUB_ENDPOINT_DEFAULT = "https://huggingface.co"
HUB_PROBE_TIMEOUT_S = 3.0
"""How long a TCP connection to the hub may take before we call the machine offline."""
HTTPS_PORT = 443


def local_model_dir(name: str) -> Path | None:
    """The Hugging Face directory `name` names, None for a hub id; a missing path -> ModelLoadError."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"model.name: {name} is a file; expected a preset name (`oel models list`), "
                             "a .gguf file, or a Hugging Face model directory")
    if HUB_ID.match(name) and not name.startswith((".", "~")):
        return None
    raise ModelLoadError(f"model.name: {name}: no such directory (expected a preset name, a .gguf file, "
                         "or a Hugging Face model directory)")


def check_hub_reachable(name: str) -> None:
    """Fail at once, in one line, when hub id `name` would have to be fetched from an unreachable hub."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelLoadError(f"model.name: '{name}' is not a preset, .gguf file or local directory, and "
                             "HF_HUB_OFFLINE is set, so it cannot be fetched from the hub")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", HUB_ENDPOINT_DEFAULT))
    host, port = endpoint.hostname or "", endpoint.port or HTTPS_PORT
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise ModelLoadError(f"model.name: '{name}' is not a preset, .gguf file or local directory, and the hub "
                             f"({host}) cannot be reached ({e.strerror or e}); offline presets: "
                             "`oel models list`") from None
