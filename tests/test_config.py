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
