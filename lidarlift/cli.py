"""``lidarlift``: the command line. Each subcommand loads the validated config and calls one package function.

    lidarlift validate-config [CONFIG] [--set KEY=VALUE ...]   check a config (exit 2 and name the keys if bad)
    lidarlift config-docs [--write | --check]                 config/README.md from config/schema.yaml
    lidarlift shards [CONFIG]                                 the shard names the DAG will use
    lidarlift synth [CONFIG] [--dataroot DIR]                 generate the synthetic world
    lidarlift manifest [CONFIG] --out results/manifest.json   read the dataset into the manifest

The workflow itself runs through Snakemake (``snakemake --profile profiles/default``); this CLI is for
single steps outside it and for checking configs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lidarlift.config import CONFIG_PATH, README_PATH, ConfigError, load_config, load_schema, parse_assignment, schema_markdown


def _config(args: argparse.Namespace) -> dict[str, Any]:
    overrides = dict(parse_assignment(a) for a in (args.set or []))
    return load_config(args.config, overrides=overrides)


def cmd_validate_config(args: argparse.Namespace) -> int:
    cfg = _config(args)
    print(f"{args.config}: valid")
    if args.show:
        print(json.dumps(cfg, indent=2))
    return 0


def cmd_config_docs(args: argparse.Namespace) -> int:
    text = schema_markdown(load_schema())
    if args.check:
        current = README_PATH.read_text() if README_PATH.exists() else ""
        if current != text:
            print(f"{README_PATH} is out of date with config/schema.yaml; run: lidarlift config-docs --write", file=sys.stderr)
            return 1
        print(f"{README_PATH} is current")
        return 0
    if args.write:
        README_PATH.write_text(text)
        print(f"wrote {README_PATH}")
        return 0
    sys.stdout.write(text)
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from lidarlift.shards import list_shards

    print("\n".join(list_shards(_config(args))))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from lidarlift.synth import generate

    cfg = _config(args)
    ds = cfg["dataset"]
    stats = generate(args.dataroot or ds["dataroot"], version=ds["version"], **cfg["synth"])
    print(json.dumps(stats, indent=2, default=str))
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from lidarlift.datasets import build_manifest

    cfg = _config(args)
    manifest = build_manifest(dict(cfg["dataset"], label_space=cfg["labels"]["space"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    manifest.to_json(args.out)
    print(f"wrote {args.out}: {len(manifest.samples)} samples in {len(manifest.shards)} shards")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lidarlift", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("config", nargs="?", default=str(CONFIG_PATH), help="config file (default: config/config.yaml)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one value, e.g. --set synth.beams=16 (repeatable)")
        return sp

    sp = with_config(sub.add_parser("validate-config", help="validate a config against config/schema.yaml"))
    sp.add_argument("--show", action="store_true", help="print the config with defaults filled in")
    sp.set_defaults(func=cmd_validate_config)

    sp = sub.add_parser("config-docs", help="write or check config/README.md (generated from the schema)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="write config/README.md")
    g.add_argument("--check", action="store_true", help="exit 1 when config/README.md is out of date")
    sp.set_defaults(func=cmd_config_docs)

    sp = with_config(sub.add_parser("shards", help="list the shards (scenes / sequences) of the configured dataset"))
    sp.set_defaults(func=cmd_shards)

    sp = with_config(sub.add_parser("synth", help="generate the synthetic world (lidarlift.synth.generate)"))
    sp.add_argument("--dataroot", help="write here instead of dataset.dataroot")
    sp.set_defaults(func=cmd_synth)

    sp = with_config(sub.add_parser("manifest", help="read the dataset into the manifest (lidarlift.datasets.build_manifest)"))
    sp.add_argument("--out", default="results/manifest.json", help="manifest path (default: results/manifest.json)")
    sp.set_defaults(func=cmd_manifest)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"lidarlift {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
