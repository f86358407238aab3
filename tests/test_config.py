"""The experiment config: schema defaults, errors that name the key, the generated config/README.md, the CLI.

Truths checked: the shipped config is valid and every key it sets is declared (so documented); a bad
value (negative beam count, unknown enum value, unknown class name, misspelt key) is refused with a
message naming the key, by lidarlift.config, by the CLI and by `snakemake -n` before any job runs;
config/README.md is exactly what the schema generates.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lidarlift import cli
from lidarlift.classes import CHALLENGE_CLASSES, SEMANTICKITTI_CLASSES
from lidarlift.config import (
    CLASS_REF, CONFIG_PATH, README_PATH, ConfigError, iter_keys, load_config, load_schema,
    schema_markdown, validate_config,
)

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

#: JSON-schema keywords a property may use; anything else is a typo or a YAML flow-mapping accident
#: (an unquoted comma inside {description: ...} splits the text into a bogus key).
KNOWN_KEYWORDS = {
    "x-scope",  # lidarlift's own: evaluation- or runtime-only keys (lidarlift.config.scoped_keys)
    "type", "default", "description", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "items", "minItems", "maxItems", "uniqueItems", "properties",
    "additionalProperties", "required", "pattern", "minLength", "maxLength", "$ref", "anyOf", "oneOf",
    "allOf", "not", "examples", "propertyNames", "minProperties", "maxProperties", "if", "then", "else",
}


def _class_list_schema() -> dict:
    """The real schema plus one class-name list, to exercise the class check on any label space."""
    schema = load_schema()
    schema["properties"]["labels"]["properties"]["test_classes"] = {
        "type": "array", "items": {"$ref": CLASS_REF}, "default": [], "description": "test only",
    }
    return schema


def test_shipped_config_is_valid_and_defaults_are_filled():
    cfg = load_config()
    for key, sub in iter_keys(load_schema()):
        if "default" not in sub:
            continue
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and parts[:-1] and not node:
            continue  # an optional sub-object absent from the config and without a default of its own
        assert parts[-1] in node, f"default of {key} not filled in"


def test_from_empty_config_every_section_gets_its_defaults():
    cfg = validate_config({"dataset": {}})
    assert cfg["synth"]["beams"] == load_schema()["properties"]["synth"]["properties"]["beams"]["default"]
    assert cfg["results"] == "results"


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"synth.beams": -1}, "config key synth.beams: -1 is less than the minimum of 1"),
        ({"dataset.kind": "simulated"}, "config key dataset.kind: 'simulated' is not one of ['synthetic', 'existing']"),
        ({"labels.space": "cityscapes"}, "config key labels.space: 'cityscapes' is not one of"),
        ({"synth.scenes": "many"}, "config key synth.scenes: 'many' is not of type 'integer'"),
        ({"dataset.sweep_prev": 3}, "config key dataset.sweep_prev: unknown key (allowed in dataset:"),
        ({"assoicate": {"occlusion": False}}, "config key assoicate: unknown key"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=override)
    assert expected in str(err.value)


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"synth.beams": 0, "dataset.kind": "x"})
    assert len(err.value.errors) == 2
    assert [e.split(":")[0] for e in err.value.errors] == ["config key dataset.kind", "config key synth.beams"]


def test_unknown_class_name_in_a_class_list_names_the_key():
    schema = _class_list_schema()
    assert load_config(overrides={"labels.test_classes": ["car", "vegetation"]}, schema=schema)
    with pytest.raises(ConfigError, match=r"config key labels\.test_classes\.1: 'tree' is not one of"):
        load_config(overrides={"labels.test_classes": ["car", "tree"]}, schema=schema)
    # a SemanticKITTI name is a class, but not of the nuScenes label space
    with pytest.raises(ConfigError, match=r"config key labels\.test_classes\.0: unknown class 'road' in label space nuscenes16"):
        load_config(overrides={"labels.test_classes": ["road"]}, schema=schema)
    cfg = load_config(overrides={"labels.test_classes": ["road"], "labels.space": "semantickitti19"}, schema=schema)
    assert cfg["labels"]["test_classes"] == ["road"]


def test_class_name_def_is_the_union_of_the_label_spaces():
    enum = load_schema()["$defs"]["class_name"]["enum"]
    assert set(enum) == set(CHALLENGE_CLASSES) | set(SEMANTICKITTI_CLASSES)


def test_every_class_name_key_of_the_schema_refuses_an_unknown_class():
    """Data-driven over the real schema: each place that declares a class name rejects 'tree'."""
    found = []  # (dotted key to override, value, key path the error must name)

    def walk(sub, path):
        if not isinstance(sub, dict):
            return
        if sub.get("$ref") == CLASS_REF:
            found.append(path)
            return
        for name, prop in (sub.get("properties") or {}).items():
            walk(prop, path + [name])
        if isinstance(sub.get("items"), dict):
            walk(sub["items"], path + ["[0]"])
        if isinstance(sub.get("additionalProperties"), dict):
            walk(sub["additionalProperties"], path + ["{tree_key}"])
        for branch in sub.get("anyOf", []) + sub.get("oneOf", []):
            walk(branch, path)

    walk(load_schema(), [])
    for path in found:
        value, keys = "tree", list(path)
        while keys[-1] in ("[0]", "{tree_key}"):
            value = [value] if keys[-1] == "[0]" else {"tree_key": value}
            keys.pop()
        named = ".".join(p.replace("[0]", "0").replace("{tree_key}", "tree_key") for p in path)
        with pytest.raises(ConfigError, match=rf"config key {named}: "):
            load_config(overrides={".".join(keys): value})


def test_snakemake_config_strings_are_parsed_to_the_schema_type():
    """`--config 'synth={beams: 16}'` reaches the Snakefile as '16'; it must mean 16 (and -1 must fail as -1)."""
    cfg = load_config()
    cfg["synth"]["beams"] = "16"
    cfg["associate"]["occlusion"] = "false"
    validate_config(cfg)
    assert cfg["synth"]["beams"] == 16 and cfg["associate"]["occlusion"] is False
    cfg["synth"]["beams"] = "-1"
    with pytest.raises(ConfigError, match="config key synth.beams: -1 is less than the minimum of 1"):
        validate_config(cfg)


def test_schema_declares_every_shipped_key_with_description_and_default():
    schema = load_schema()
    declared = {key: sub for key, sub in iter_keys(schema)}
    shipped = yaml.safe_load(CONFIG_PATH.read_text())

    def walk(node, prefix):
        for name, value in node.items():
            key = prefix + name
            assert key in declared, f"config/config.yaml sets {key}, which config/schema.yaml does not declare"
            sub = declared[key]
            if isinstance(value, dict) and "properties" in sub:
                walk(value, key + ".")

    walk(shipped, "")
    problems = []
    for key, sub in declared.items():
        unknown = set(sub) - KNOWN_KEYWORDS
        if unknown:
            problems.append(f"{key}: unknown schema keywords {sorted(unknown)} (unquoted comma in a flow mapping?)")
        if not str(sub.get("description", "")).strip():
            problems.append(f"{key}: no description")
        if "default" not in sub and sub.get("type") != "object":
            problems.append(f"{key}: no default")
    assert not problems, "\n".join(problems)


def test_config_readme_is_current():
    assert README_PATH.read_text() == schema_markdown(load_schema()), (
        "config/README.md is out of date with config/schema.yaml: run `lidarlift config-docs --write`"
    )


def test_config_readme_lists_every_key():
    text = README_PATH.read_text()
    for key, _ in iter_keys(load_schema()):
        assert f"`{key}`" in text, key


def test_cli_validate_config(capsys, tmp_path):
    assert cli.main(["validate-config", str(CONFIG_PATH)]) == 0
    assert cli.main(["validate-config", "--set", "synth.beams=-1"]) == 2
    assert "config key synth.beams: -1 is less than the minimum of 1" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    cfg = yaml.safe_load(CONFIG_PATH.read_text())
    cfg["dataset"]["kind"] = "simulated"
    bad.write_text(yaml.safe_dump(cfg))
    assert cli.main(["validate-config", str(bad)]) == 2
    assert "config key dataset.kind" in capsys.readouterr().err


def test_cli_config_docs_check_and_shards(capsys):
    assert cli.main(["config-docs", "--check"]) == 0
    assert cli.main(["shards", "--set", "synth.scenes=3"]) == 0
    assert capsys.readouterr().out.split()[-3:] == ["scene-0061", "scene-0103", "scene-0916"]


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("lidarlift")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("validate-config", "config-docs", "shards", "synth", "manifest"):
        assert command in out


@pytest.mark.parametrize(
    "config_arg, expected",
    [
        ("synth={beams: -1}", "config key synth.beams: -1 is less than the minimum of 1"),
        ("dataset={kind: simulated}", "config key dataset.kind: 'simulated' is not one of"),
        ("labels={space: cityscapes}", "config key labels.space: 'cityscapes' is not one of"),
    ],
)
def test_snakemake_stops_at_start_naming_the_key(tmp_path, config_arg, expected):
    """`snakemake -n --config ...` with a bad value fails while parsing, before planning any job."""
    proc = subprocess.run(
        [SNAKEMAKE, "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO), "--nolock",
         "--config", config_arg],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert expected in out, out[-3000:]
    assert "Building DAG of jobs" not in out


def test_unchanged_override_keeps_params_equal():
    """Overriding a value with itself (as --config strings) leaves the validated section identical."""
    base = load_config()
    again = copy.deepcopy(yaml.safe_load(CONFIG_PATH.read_text()))
    again["synth"] = {k: str(v) for k, v in again["synth"].items()}
    assert validate_config(again)["synth"] == base["synth"]


def test_cli_synth_then_manifest(tmp_path, capsys):
    """`lidarlift synth` writes a world the devkit layout check accepts; `lidarlift manifest` reads it."""
    small = ["--set", "synth.scenes=2", "--set", "synth.samples_per_scene=1", "--set", "synth.image_width=64",
             "--set", "synth.image_height=36", "--set", "synth.beams=8"]
    world = tmp_path / "world"
    assert cli.main(["synth", *small, "--dataroot", str(world)]) == 0
    assert (world / "v1.0-mini" / "scene.json").is_file()
    out = tmp_path / "manifest.json"
    assert cli.main(["manifest", *small, "--set", "dataset.kind=existing", "--set", f"dataset.dataroot={world}",
                     "--out", str(out)]) == 0
    manifest = json.loads(out.read_text())
    assert "2 samples in 2 shards" in capsys.readouterr().out
    assert isinstance(manifest, dict)


def test_key_order_does_not_change_what_rules_see():
    """The same values in another key order give identical sections (params compare as text)."""
    cfg = yaml.safe_load(CONFIG_PATH.read_text())
    reordered = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(list(cfg.items()))}
    a, b = validate_config(copy.deepcopy(cfg)), validate_config(reordered)
    assert repr(a) == repr(b)
    assert list(a["synth"]) == sorted(a["synth"])


# --- typed parameter classes: the schema is the one source of defaults ----------------------------------


def _schema_default(path: str):
    """The schema's default of a dotted key; a sub-section's default is its keys' defaults."""
    from lidarlift.config import section, subschema

    parent, _, key = path.rpartition(".")
    sub = subschema(path)
    if "properties" in sub:
        return section(path, {})
    return sub["default"]


def _assert_schema_defaults(obj, path: str, renamed: dict[str, str] | None = None, skip: tuple[str, ...] = ()) -> int:
    """Every init field of the dataclass ``obj`` has no default of its own and equals the schema default
    of ``<path>.<field>`` (``renamed``: field -> dotted key under ``path`` where the names differ); nested
    dataclasses recursively. Returns the number of leaf values compared."""
    import dataclasses

    n = 0
    for f in dataclasses.fields(obj):
        if not f.init or f.name in skip:
            continue
        where = f"{type(obj).__name__}.{f.name}"
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f"{where} has a default"
        key = f"{path}.{(renamed or {}).get(f.name, f.name)}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            n += _assert_schema_defaults(value, key)
            continue
        want = _schema_default(key)
        assert (list(value) if isinstance(value, tuple) else value) == want, (where, key, value, want)
        n += 1
    return n


def test_parameter_classes_take_every_default_from_the_schema():
    """``X.from_config({})`` of every typed parameter class is exactly config/schema.yaml's defaults, and
    no field of these classes carries a default of its own (the schema is the one place)."""
    from lidarlift.associate import AssociateParams
    from lidarlift.evaluate.instances import InstanceParams
    from lidarlift.masks.weightfree import WeightFreeParams
    from lidarlift.model.data import AugmentConfig
    from lidarlift.model.train import TrainConfig
    from lidarlift.model.unet import UNetConfig
    from lidarlift.presegment import PresegmentParams
    from lidarlift.pseudolabels.annotation_free import AnnotationFreeParams
    from lidarlift.pseudolabels.estep import EStepParams
    from lidarlift.pseudolabels.propagate import GraphParams
    from lidarlift.pseudolabels.simulate2d import Corruption
    from lidarlift.pseudolabels.stage import ClickParams, Semantic2DParams, StageParams
    from lidarlift.superpixels import SuperpixelParams
    from lidarlift.synth.world import WorldParams
    from lidarlift.temporal import TemporalParams

    cases = [
        (AssociateParams.from_config({}), "associate", {"bad_sample_policy": None}),
        (PresegmentParams.from_config({}), "presegment", None),
        (ClickParams.from_config({}), "pseudolabels.clicks", None),
        (Semantic2DParams.from_config({}), "pseudolabels.annotation_free.semantic2d", None),
        (GraphParams.from_config({}), "pseudolabels.ours", None),
        (EStepParams.from_config({}), "pseudolabels.estep", None),
        (Corruption.from_config({}), "pseudolabels.annotation_free.simulated", None),
        (AnnotationFreeParams.from_config({}), "pseudolabels.annotation_free.refine", None),
        (StageParams.from_config({}), "pseudolabels", {"af_method": "annotation_free.method", "semantic2d": "annotation_free.semantic2d",
                                                       "corruption": "annotation_free.simulated", "refine": "annotation_free.refine"}),
        (WeightFreeParams.from_config({}), "masks.weightfree", None),
        (AugmentConfig.from_config({}), "train.augment", None),
        (UNetConfig.from_config({}, num_classes=19), "train.model", {"num_classes": None}),
        (TrainConfig.from_config({}, num_classes=19), "train", {"model": None}),
        (SuperpixelParams.from_config({}), "superpixels", None),
        (TemporalParams.from_config({}), "temporal", None),
        (InstanceParams.from_config({}), "evaluate.instances", None),
        (WorldParams.from_config({}), "synth", {"version": None}),
    ]
    for obj, path, renamed in cases:
        skip = tuple(k for k, v in (renamed or {}).items() if v is None)  # fields that are no key of this section
        assert _assert_schema_defaults(obj, path, {k: v for k, v in (renamed or {}).items() if v}, skip) >= 3, path
    assert AssociateParams.from_config({}).bad_sample_policy == _schema_default("dataset.bad_sample_policy")
    assert WorldParams.from_config({}).version == _schema_default("dataset.version")
    assert WorldParams.from_config({}, version="v1.0-trainval").version == "v1.0-trainval"
    unet = UNetConfig.from_config({}, num_classes=19)
    assert unet.num_classes == 19 and UNetConfig.from_dict(unet.to_dict()) == unet
    train = TrainConfig.from_config({}, num_classes=19)
    assert train.model == {**_schema_default("train.model"), "num_classes": 19} and train.unet == unet
    # evaluation-scoped keys never reach a production class: the whole section with them is accepted
    full = load_config()
    assert PresegmentParams.from_config(full["presegment"]) == PresegmentParams.from_config({})
    assert StageParams.from_config(full["pseudolabels"]) == StageParams.from_config({})


@pytest.mark.parametrize("build, bad, key", [
    ("lidarlift.associate:AssociateParams", {"footprint_m": -1}, "associate.footprint_m"),
    ("lidarlift.associate:AssociateParams", {"footprint_beams": 0.8, "footprint_max_beams": 0.5}, "associate.footprint_max_beams"),
    ("lidarlift.associate:AssociateParams", {"bad_sample_policy": "ignore"}, "dataset.bad_sample_policy"),
    ("lidarlift.presegment:PresegmentParams", {"fast": {"cluster": "dbscan"}}, "presegment.fast.cluster"),
    ("lidarlift.presegment:PresegmentParams", {"iupc": {"ground": {"ransac_n": 2}}}, "presegment.iupc.ground.ransac_n"),
    ("lidarlift.presegment:PresegmentParams", {"fast": {"range_image": {"stack_above": 1.5}}}, "presegment.fast.range_image.stack_above"),
    ("lidarlift.pseudolabels.stage:ClickParams", {"share": 2}, "pseudolabels.clicks.share"),
    ("lidarlift.pseudolabels.stage:ClickParams", {"protocol": "file"}, "pseudolabels.clicks.file"),
    ("lidarlift.pseudolabels.stage:Semantic2DParams", {"source": "files"}, "pseudolabels.annotation_free.semantic2d.dir"),
    ("lidarlift.pseudolabels.stage:StageParams", {"mode": "dreams"}, "pseudolabels.mode"),
    ("lidarlift.pseudolabels.stage:StageParams", {"annotation_free": {"method": "x"}}, "pseudolabels.annotation_free.method"),
    ("lidarlift.pseudolabels.propagate:GraphParams", {"knn": 0}, "pseudolabels.ours.knn"),
    ("lidarlift.pseudolabels.propagate:GraphParams", {"label_cost": 0.5, "candidate_cost": 0.0}, "pseudolabels.ours.label_cost"),
    ("lidarlift.pseudolabels.estep:EStepParams", {"agree": "some"}, "pseudolabels.estep.agree"),
    ("lidarlift.pseudolabels.simulate2d:Corruption", {"miss": 1.5}, "pseudolabels.annotation_free.simulated.miss"),
    ("lidarlift.pseudolabels.annotation_free:AnnotationFreeParams", {"mask_cut": "some"}, "pseudolabels.annotation_free.refine.mask_cut"),
    ("lidarlift.masks.weightfree:WeightFreeParams", {"k": 0}, "masks.weightfree.k"),
    ("lidarlift.model.data:AugmentConfig", {"scale": [1.0]}, "train.augment.scale"),
    ("lidarlift.model.unet:UNetConfig", {"in_features": 5}, "train.model.in_features"),
    ("lidarlift.model.unet:UNetConfig", {"point_range": [0, 0, 0, 1, -1, 1]}, "train.model.point_range"),
    ("lidarlift.model.train:TrainConfig", {"optimizer": "adam"}, "train.optimizer"),
    ("lidarlift.model.train:TrainConfig", {"loss": {"dice_weight": 1}}, "train.loss.dice_weight"),
])
def test_parameter_classes_refuse_bad_values_naming_the_key(build, bad, key):
    import importlib
    import re

    module, name = build.split(":")
    cls = getattr(importlib.import_module(module), name)
    kw = {"num_classes": 16} if name in ("UNetConfig", "TrainConfig") else {}
    with pytest.raises(ValueError, match=rf"config key {re.escape(key)}\b"):
        cls.from_config(bad, **kw)


def test_schema_enums_are_the_registered_implementations():
    """Where code keeps a registry of implementations, the schema's enum names exactly those."""
    from lidarlift.config import subschema
    from lidarlift.presegment import CLUSTERERS, METHODS
    from lidarlift.pseudolabels.clicks import PROTOCOLS

    assert sorted(subschema("presegment.method")["enum"]) == sorted(METHODS)
    assert sorted(subschema("presegment.fast.cluster")["enum"]) == sorted(CLUSTERERS)
    assert sorted(subschema("pseudolabels.clicks.protocol")["enum"]) == sorted(PROTOCOLS)
