"""`oel online ...`: the scheduler, the store's export, and the operator's version commands.

    oel online run CONFIG [key=value ...]          the scheduler (rounds until max_rounds or SIGTERM)
    oel online status CONFIG [key=value ...]       store numbers, current version, last round (JSON)
    oel online export STORE OUT.jsonl [--round N]  trajectories as the batch stages read them
    oel online versions VERSIONS_DIR               published versions; `*` marks current
    oel online rollback VERSIONS_DIR VERSION       point current.json at an earlier version
    oel online restore VERSIONS_DIR VERSION        ... or back at a later one (undo a rollback)
    oel online demo [CONFIG] [key=value ...]       gateway + scheduler + simulated users on this machine
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from oel.commands import add_config_command
from oel.errors import DataError
from oel.online.config import OnlineConfig
from oel.online.demo import DemoConfig, run_demo
from oel.online.pg import is_url
from oel.online.scheduler import Scheduler, status
from oel.online.store import Store
from oel.online.versions import Versions, version_name


def _run(config: OnlineConfig, ns: argparse.Namespace) -> int:
    scheduler = Scheduler(config)
    try:
        done = scheduler.run_forever()
    finally:
        scheduler.close()
    print(f"scheduler stopped after {done} round(s); current version: {scheduler.versions.current().version}")
    return 0


def _status(config: OnlineConfig, ns: argparse.Namespace) -> int:
    print(json.dumps(status(config), indent=2))
    return 0


def _export(ns: argparse.Namespace) -> int:
    if not is_url(ns.store) and not Path(ns.store).is_file():  # exporting must not create an empty store
        raise DataError(f"{ns.store}: store not found")
    with Store.open(ns.store) as store:
        n = store.export_jsonl(ns.out, round=ns.round)
    print(f"exported {n} trajectories to {ns.out}")
    return 0


def _versions(ns: argparse.Namespace) -> int:
    versions = Versions(ns.versions_dir)
    if not versions.current_file.is_file():
        raise DataError(f"{ns.versions_dir}: not a versions directory (no {versions.current_file.name})")
    current = versions.current().version
    for v in versions.list():
        mark = "*" if v.version == current else " "
        verdict = v.verdict.get("reason", "") or ("gate off" if v.verdict.get("check") == "off" else "")
        print(f"{mark} {version_name(v.version)}  round {v.round if v.round is not None else '-':>4}  "
              f"parent {v.parent if v.parent is not None else '-':>4}  {v.model_dir}  {verdict}".rstrip())
    return 0


def _move_current(ns: argparse.Namespace) -> int:
    versions = Versions(ns.versions_dir)
    target = versions.rollback(ns.version) if ns.online_command == "rollback" else versions.restore(ns.version)
    print(f"current is now {version_name(target.version)}: {target.model_dir}")
    return 0


def _demo(config: Any, ns: argparse.Namespace) -> int:
    summary = run_demo(config)
    print(json.dumps(summary, indent=2))
    print(f"report: oel report {config.run_dir}")
    return 1 if summary["user_errors"] else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("online", help="the online mode: the scheduler that learns from the store, and "
                                             "its versions",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="online_command", metavar="ACTION", required=True)
    add_config_command(sub, "run", OnlineConfig, _run,
                       help="run the scheduler: rounds of extract -> consolidate (-> gate) -> publish, resumable",
                       description=("Run rounds when min_trajectories new trajectories are stored (or every_minutes); "
                                    "each publishes a version in versions.dir and moves current.json. kill -9 and the "
                                    "same command resumes the unfinished round."))
    add_config_command(sub, "status", OnlineConfig, _status, help="the store's numbers, the current version, "
                                                                  "the last round")
    e = sub.add_parser("export", help="write the store's trajectories as trajectory JSONL")
    e.add_argument("store", help="the SQLite store")
    e.add_argument("out", help="the JSONL file to write (atomically)")
    e.add_argument("--round", type=int, default=None, help="only this round's trajectories (in claim order)")
    e.set_defaults(func=_export)
    v = sub.add_parser("versions", help="list the published versions (* = current)")
    v.add_argument("versions_dir")
    v.set_defaults(func=_versions)
    r = sub.add_parser("rollback", help="point current.json at an earlier published version (recorded in "
                                        "history.jsonl)")
    r.add_argument("versions_dir")
    r.add_argument("version", type=int)
    r.set_defaults(func=_move_current)
    f = sub.add_parser("restore", help="point current.json at a later published version, undoing a rollback")
    f.add_argument("versions_dir")
    f.add_argument("version", type=int)
    f.set_defaults(func=_move_current)
    add_config_command(sub, "demo", DemoConfig, _demo,
                       help="the online mode on this machine: gateway, scheduler and simulated users over "
                            "loopback HTTP",
                       description=("Start the gateway (serving the current version), the scheduler (a child process) "
                                    "and `users` simulated agents playing the game through the gateway; stop when "
                                    "`rounds` rounds ended; `oel report RUN_DIR` writes the online report."))
