"""``lidarlift``: the command line. Each subcommand loads the validated config and calls one package function.

    lidarlift validate-config [CONFIG] [--set KEY=VALUE ...]   check a config (exit 2 and name the keys if bad)
    lidarlift config-docs [--write | --check]                 config/README.md from config/schema.yaml
    lidarlift shards [CONFIG]                                 the shard names the DAG will use
    lidarlift synth [CONFIG] [--dataroot DIR]                 generate the synthetic world
    lidarlift manifest [CONFIG] --out results/manifest.json   read the dataset into the manifest
    lidarlift clicks next [CONFIG] --share 0.0005 [--clicks answered.tsv ...]
                                                              write results/clicks/next.tsv: the points to click next
    lidarlift clicks merge FILE ... --out clicks.tsv          answered clicks files -> one clicks file

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


def cmd_clicks_next(args: argparse.Namespace) -> int:
    from lidarlift.pseudolabels.active import next_clicks

    cfg = _config(args)
    res = Path(args.results)
    manifest = res / "manifest.json"
    if not manifest.exists():
        raise ConfigError(f"{manifest} does not exist: run the workflow up to the masks first (snakemake {res}/masks/<shard>.zarr)")
    from lidarlift.manifest import Manifest

    shards = args.shards.split(",") if args.shards else Manifest.from_json(manifest).shards
    stages = ("associate", "presegment", "superpixels", "masks")

    from lidarlift.pseudolabels.clicks import ClickError

    def stores(shard: str) -> dict[str, str]:
        paths = {k: str(res / k / f"{shard}.zarr") for k in stages}
        missing = [p for p in paths.values() if not Path(p).exists()]
        if missing:
            raise ConfigError(f"shard {shard}: missing stores {missing}; make them first (snakemake {' '.join(missing)})")
        return paths

    def predict(shard: str) -> str | None:
        return None if args.predict_round is None else str(res / "predict" / f"r{args.predict_round}" / f"{shard}.zarr")

    out = Path(args.out) if args.out else res / "clicks" / "next.tsv"
    try:
        n = next_clicks(manifest, shards, stores, args.share, out, cfg["pseudolabels"], args.clicks or [], predict)
    except ClickError as e:
        raise ConfigError(str(e)) from None
    print(f"wrote {out}: {sum(n.values())} points to click in {len(n)} keyframes; fill its class column "
          "(class name, 1..K or ignore) and pass it to the next round with --clicks, or set pseudolabels.clicks.file")
    return 0


def cmd_clicks_merge(args: argparse.Namespace) -> int:
    from lidarlift.classes import label_space
    from lidarlift.datasets.readers import read_lidar
    from lidarlift.manifest import Manifest
    from lidarlift.pseudolabels import clicks as ck

    manifest = Manifest.from_json(args.manifest)
    space = label_space(manifest.label_space)
    counts = {s.token: len(read_lidar(manifest.resolve(s.lidar.path), s.lidar.fmt, s.token)) for s in manifest.samples}
    merged = {t: ck.SampleClicks.empty() for t in counts}
    for path in args.files:
        try:
            answered = ck.read_clicks(path, space, counts)
        except ck.ClickError as e:
            raise ConfigError(str(e)) from None
        for t, c in answered.items():
            merged[t] = merged[t].merged(c)
    merged = {t: c for t, c in merged.items() if len(c.asked)}
    ck.write_clicks(args.out, merged, space)
    print(f"wrote {args.out}: {sum(len(c) for c in merged.values())} clicks in {len(merged)} keyframes")
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

    clicks = sub.add_parser("clicks", help="active clicks for a person: the points to click next, and answered files")
    csub = clicks.add_subparsers(dest="clicks_command", required=True, metavar="ACTION")
    sp = with_config(csub.add_parser("next", help="write the next-clicks file (lidarlift.pseudolabels.active.next_clicks)"))
    sp.add_argument("--results", default="results", help="the run's results folder (manifest and upstream stores)")
    sp.add_argument("--share", type=float, required=True, help="this round's clicks as a share of each keyframe's points")
    sp.add_argument("--clicks", action="append", metavar="FILE", help="clicks answered so far (repeatable; answered next-clicks files are such files)")
    sp.add_argument("--shards", default="", help="comma-separated shards (default: every shard of the manifest)")
    sp.add_argument("--predict-round", type=int, default=None, help="also ask where this round's network disagrees with the propagation")
    sp.add_argument("--out", default=None, help="default: <results>/clicks/next.tsv")
    sp.set_defaults(func=cmd_clicks_next)
    sp = csub.add_parser("merge", help="merge answered clicks files into one clicks file (pseudolabels.clicks.file)")
    sp.add_argument("files", nargs="+", help="clicks files or answered next-clicks files")
    sp.add_argument("--manifest", default="results/manifest.json")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_clicks_merge)
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
