"""The experiment configuration: load, validate against ``config/schema.yaml`` with defaults, document.

One validator serves the workflow (the Snakefile calls :func:`validate_config` on Snakemake's
``config`` when it starts), the CLI (``lidarlift validate-config``) and the tests, so a bad value is
refused the same way everywhere, with a message naming the key::

    config key synth.beams: -1 is less than the minimum of 1

``config/README.md`` is generated from the schema by :func:`schema_markdown` (``lidarlift
config-docs --write``); a test checks that it is current.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

#: The repository's config folder (the package is installed editable from the repository).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
SCHEMA_PATH = CONFIG_DIR / "schema.yaml"
CONFIG_PATH = CONFIG_DIR / "config.yaml"
README_PATH = CONFIG_DIR / "README.md"

_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "string": (str,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


class ConfigError(ValueError):
    """An invalid configuration; ``errors`` lists one ``config key <path>: <problem>`` line per problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.errors) if len(errors) > 1 else self.errors[0])


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The JSON schema (YAML file) as a dict."""
    return yaml.safe_load(Path(path).read_text())


def load_config(
    path: str | Path | None = CONFIG_PATH,
    overrides: Mapping[str, Any] | None = None,
    schema: str | Path | dict[str, Any] = SCHEMA_PATH,
) -> dict[str, Any]:
    """Read a config file, merge ``overrides`` into it, fill defaults and validate.

    Args:
        path: YAML config file; None starts from an empty config (all defaults).
        overrides: nested dict merged key by key over the file (as Snakemake's ``--config``), or
            dotted keys (``{"synth.beams": 16}``).
        schema: the schema file or the schema dict.
    Returns:
        The validated config with every default filled in.
    Raises:
        ConfigError naming each bad key.
    """
    cfg: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError([f"config file {path}: expected a mapping of sections, got {type(loaded).__name__}"])
        cfg = loaded or {}
    if overrides:
        cfg = merge(cfg, expand_dotted(overrides))
    return validate_config(cfg, schema)


def validate_config(config: dict[str, Any], schema: str | Path | dict[str, Any] = SCHEMA_PATH) -> dict[str, Any]:
    """Validate ``config`` in place: coerce strings from ``--config``, fill defaults, check every key.

    Snakemake parses nested ``--config`` values as strings (``--config 'synth={beams: 16}'`` gives
    ``'16'``); where the schema wants a number, boolean, null or list such a string is parsed as YAML
    first, so the override means what it says and an unchanged value does not re-trigger a rule.

    Every mapping's keys are put in alphabetical order, so params (compared by Snakemake as text)
    depend on the values, not on the order of keys in a file.

    Returns ``config`` (the same object) and raises ConfigError naming each bad key.
    """
    import jsonschema

    if not isinstance(schema, dict):
        schema = load_schema(schema)
    _coerce(config, schema, schema)
    validator_cls = _with_defaults(jsonschema.Draft202012Validator)
    validator = validator_cls(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        raise ConfigError([_describe(e) for e in errors])
    problems = list(_label_space_problems(config, schema))
    if problems:
        raise ConfigError(problems)
    _sort_keys(config)
    return config


def _sort_keys(node: Any) -> None:
    """Reorder every mapping's keys alphabetically, in place.

    Rules receive config sections as ``params:`` and Snakemake compares params by their text, so the
    same values in another key order (a reordered YAML file, a ``--config`` merge) would re-run a
    stage; a canonical order makes params depend on the values only.
    """
    if isinstance(node, dict):
        for key in sorted(node, key=str):
            value = node.pop(key)
            _sort_keys(value)
            node[key] = value
    elif isinstance(node, list):
        for value in node:
            _sort_keys(value)


def expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"synth.beams": 16}`` -> ``{"synth": {"beams": 16}}`` (nested dicts pass through)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = merge(node[parts[-1]], value) if isinstance(node.get(parts[-1]), dict) and isinstance(value, dict) else value
    return out


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in key by key (dicts recursively, anything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"synth.beams=16"`` -> ``("synth.beams", 16)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError([f"override {text!r}: expected KEY=VALUE, e.g. synth.beams=16"])
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


# --- scopes: what a key is for -------------------------------------------------------------------------
#
# A key is part of the experiment unless the schema marks it ``x-scope``:
# - ``evaluation``: it only changes how results are scored (e.g. ``presegment.split_min_points``) or
#   which baselines are scored beside them; production rules never see it, evaluation rules do;
# - ``runtime``: it only changes where or how fast a job runs (e.g. ``masks.encoder_batch``); it is
#   not a ``params:`` of any rule (a change re-runs nothing) and a job reads it through
#   :func:`lidarlift.workflow.runtime_settings`.

SCOPES = ("evaluation", "runtime")


def scoped_keys(scope: str, schema: dict[str, Any] | None = None) -> frozenset[str]:
    """Dotted keys the schema marks ``x-scope: <scope>``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of {SCOPES}")
    schema = schema if schema is not None else _cached_schema()
    return frozenset(k for k, sub in iter_keys(schema) if sub.get("x-scope") == scope)


_SCHEMA_CACHE: dict[str, Any] = {}


def _cached_schema() -> dict[str, Any]:
    if "schema" not in _SCHEMA_CACHE:
        _SCHEMA_CACHE["schema"] = load_schema()
    return _SCHEMA_CACHE["schema"]


def _drop(node: dict[str, Any], prefix: str, keys: frozenset[str]) -> dict[str, Any]:
    out = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if key in keys:
            continue
        out[k] = _drop(v, key + ".", keys) if isinstance(v, dict) else copy.deepcopy(v)
    return out


def _keep(node: dict[str, Any], prefix: str, keys: frozenset[str]) -> dict[str, Any]:
    out = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if key in keys:
            out[k] = copy.deepcopy(v)
        elif isinstance(v, dict) and any(s.startswith(key + ".") for s in keys):
            out[k] = _keep(v, key + ".", keys)
    return out


def production_section(config: dict[str, Any], section: str) -> dict[str, Any]:
    """A config section without its evaluation and runtime keys: what a production rule takes as
    ``params:`` (so re-scoring or moving a job to other hardware re-runs nothing)."""
    keys = scoped_keys("evaluation") | scoped_keys("runtime")
    return _drop(config.get(section) or {}, f"{section}.", keys)


def without_scoped(section: str, cfg: dict[str, Any] | None, scopes: tuple[str, ...] = ("evaluation",)) -> dict[str, Any]:
    """A section mapping (``cfg``) without the keys the schema marks with one of ``scopes``: what a
    stage's parameter builder keeps when it is handed a whole section (library calls, tests)."""
    keys: frozenset[str] = frozenset().union(*(scoped_keys(sc) for sc in scopes))
    return _drop(dict(cfg or {}), f"{section}.", keys)


def scoped_section(config: dict[str, Any], section: str, scope: str) -> dict[str, Any]:
    """Only the keys of a section that the schema marks ``x-scope: <scope>``."""
    return _keep(config.get(section) or {}, f"{section}.", scoped_keys(scope))


def evaluation_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Everything the evaluation rules take as ``params:``: the ``evaluate`` section and every
    evaluation-scoped key of the other sections, by section."""
    out = {"evaluate": copy.deepcopy(config.get("evaluate") or {})}
    for key in sorted({k.split(".", 1)[0] for k in scoped_keys("evaluation")}):
        part = scoped_section(config, key, "evaluation")
        if part:
            out[key] = part
    return out


# --- typed sections: defaults in one place ---------------------------------------------------------------


def subschema(path: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The schema of a config section or key, by dotted path (``"presegment.fast.ground"``)."""
    root = schema if schema is not None else _cached_schema()
    node = root
    for part in path.split("."):
        props = _resolve(node, root).get("properties") or {}
        if part not in props:
            raise KeyError(f"config/schema.yaml has no key {path!r}")
        node = props[part]
    return _resolve(node, root)


def section(path: str, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A config section with every default filled from the schema, ``cfg`` merged over them, strings
    from ``--config`` parsed, and validated: errors name the key (``config key <path>.<key>: ...``).
    This is where code outside the workflow (library calls, tests, benchmarks) gets a section's
    defaults: the schema is their only source."""
    import jsonschema

    root = _cached_schema()
    sub = subschema(path, root)
    data = copy.deepcopy(dict(cfg or {}))
    _coerce(data, sub, root)
    full = {**sub, "$defs": root.get("$defs", {})}  # keep $defs for references inside the section
    validator = _with_defaults(jsonschema.Draft202012Validator)(full)
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        raise ConfigError([_describe(e, path) for e in errors])
    return data


def typed(cls: type, path: str, cfg: Mapping[str, Any] | None = None, *,
          drop_scopes: tuple[str, ...] = ("evaluation",), extra: Mapping[str, Any] | None = None) -> Any:
    """A parameter dataclass of config section ``path`` from :func:`section` (schema defaults, ``cfg``
    over them, validated), nested dataclass fields built from their sub-sections, list values turned
    into tuples where the field is a tuple. Keys the schema marks with one of ``drop_scopes`` that the
    class has no field for are dropped (a stage's builder handed its whole section). The dataclasses
    carry no defaults of their own: the schema is the one place.

    ``extra``: values of the class's fields that are keys of another section (e.g.
    ``dataset.bad_sample_policy`` beside the ``associate`` keys), already validated by the caller
    (through :func:`section` of their own section)."""
    import dataclasses
    import typing

    names = {f.name for f in dataclasses.fields(cls)}
    scoped = frozenset().union(*(scoped_keys(sc) for sc in drop_scopes)) if drop_scopes else frozenset()
    data = {k: v for k, v in dict(cfg or {}).items() if k in names or f"{path}.{k}" not in scoped}
    data = section(path, data)
    return _build_typed(cls, path, {**data, **dict(extra or {})}, typing.get_type_hints(cls))


def _build_typed(cls: type, path: str, data: dict[str, Any], hints: dict[str, Any]) -> Any:
    import dataclasses
    import typing

    kw = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in data:
            raise ConfigError([f"config key {path}.{f.name}: {cls.__name__} needs it but config/schema.yaml has no default"])
        value, t = data[f.name], hints.get(f.name)
        if dataclasses.is_dataclass(t):
            value = _build_typed(t, f"{path}.{f.name}", value, typing.get_type_hints(t))
        elif typing.get_origin(t) is tuple and isinstance(value, list):
            value = tuple(value)
        kw[f.name] = value
    return cls(**kw)


# --- documentation -------------------------------------------------------------------------------------


def iter_keys(schema: dict[str, Any], root: dict[str, Any] | None = None, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted key, subschema) for every property in the schema, depth first in schema order."""
    root = root if root is not None else schema
    for name, sub in (schema.get("properties") or {}).items():
        sub = _resolve(sub, root)
        key = f"{prefix}{name}"
        yield key, sub
        if sub.get("type") == "object" or "properties" in sub:
            yield from iter_keys(sub, root, key + ".")


def schema_markdown(schema: dict[str, Any] | None = None, config_path: str | Path | None = CONFIG_PATH) -> str:
    """``config/README.md``: every config key with type, default, allowed values and description.

    Where ``config_path`` sets a leaf to something other than the schema default, the table shows it.
    """
    schema = schema if schema is not None else load_schema()
    shipped: dict[str, Any] = {}
    if config_path is not None and Path(config_path).exists():
        shipped = yaml.safe_load(Path(config_path).read_text()) or {}
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from config/schema.yaml by `lidarlift config-docs --write`; do not edit by hand. -->",
        "",
        "The experiment lives in `config/config.yaml` (one section per stage) and is validated against",
        "`config/schema.yaml` when the workflow starts: defaults are filled in and a bad value stops the run",
        "with a message naming the key (`config key synth.beams: -1 is less than the minimum of 1`).",
        "Check a config without running anything: `lidarlift validate-config my_config.yaml`.",
        "Override single values on the command line: `snakemake --config 'synth={scenes: 4}'`",
        "(the rest of the section keeps its values). Runtime settings (threads, memory, GPUs, executor)",
        "are not here: they live in `profiles/` (see `profiles/README.md`).",
        "",
        "Changing a value re-runs the rules that take its section as `params:` and everything downstream,",
        "nothing upstream (see the README's *Re-running one stage*).",
        "",
    ]
    if schema.get("description"):
        lines += [schema["description"], ""]
    top_rows: list[tuple[str, dict[str, Any]]] = []
    sections: list[tuple[str, dict[str, Any]]] = []
    for name, sub in (schema.get("properties") or {}).items():
        sub = _resolve(sub, schema)
        (sections if sub.get("type") == "object" or "properties" in sub else top_rows).append((name, sub))
    if top_rows:
        lines += ["## Top level", "", *_table(top_rows, schema, shipped)]
    for name, sub in sections:
        lines += [f"## `{name}`", ""]
        if sub.get("description"):
            lines += [sub["description"], ""]
        rows = list(iter_keys(sub, schema, f"{name}."))
        if rows:
            lines += _table(rows, schema, shipped)
        else:
            lines += ["(no keys declared)", ""]
        if sub.get("additionalProperties", True) is not False:
            lines += ["Keys not listed here are accepted without checks.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _table(rows: list[tuple[str, dict[str, Any]]], root: dict[str, Any], shipped: dict[str, Any]) -> list[str]:
    out = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for key, sub in rows:
        desc = str(sub.get("description", "")).strip()
        value = _lookup(shipped, key)
        if value is not _MISSING and "default" in sub and value != sub["default"] and not isinstance(value, dict):
            desc += f" (config/config.yaml sets {_fmt(value)})"
        out.append(
            "| `{}` | {} | {} | {} | {} |".format(
                key, _type_text(sub, root), _fmt(sub["default"]) if "default" in sub else "—",
                _allowed_text(sub, root), desc.replace("|", "\\|").replace("\n", " "),
            )
        )
    return out + [""]


_MISSING = object()


def _lookup(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return _MISSING
        cfg = cfg[part]
    return cfg


def _fmt(value: Any) -> str:
    return "`" + json.dumps(value) + "`"


def _type_text(sub: dict[str, Any], root: dict[str, Any]) -> str:
    t = sub.get("type")
    if t is None and "enum" in sub:
        t = "enum"
    if isinstance(t, list):
        t = " or ".join(t)
    if t == "array" and "items" in sub:
        items = _resolve(sub["items"], root)
        t = f"list of {items.get('type', 'values') if 'enum' not in items else 'names'}"
    return str(t or "any")


def _allowed_text(sub: dict[str, Any], root: dict[str, Any]) -> str:
    parts = []
    target = sub
    if sub.get("type") == "array" and "items" in sub:
        target = _resolve(sub["items"], root)
    if "enum" in target:
        names = [str(v) for v in target["enum"]]
        parts.append(", ".join(names) if len(names) <= 8 else f"{', '.join(names[:6])}, … ({len(names)} names, see `$defs` in the schema)")
    for kw, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if kw in target:
            parts.append(f"{sym} {target[kw]}")
    if "minItems" in sub:
        parts.append(f"at least {sub['minItems']} items")
    if "pattern" in target:
        parts.append(f"matches `{target['pattern']}`")
    return "; ".join(parts)


# --- internals -----------------------------------------------------------------------------------------


def _resolve(sub: Any, root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/name``), keeping the referring schema's own keys on top."""
    if isinstance(sub, dict) and isinstance(sub.get("$ref"), str) and sub["$ref"].startswith("#/"):
        target: Any = root
        for part in sub["$ref"][2:].split("/"):
            target = target[part]
        merged = dict(_resolve(target, root))
        merged.update({k: v for k, v in sub.items() if k != "$ref"})
        return merged
    return sub if isinstance(sub, dict) else {}


def _types_of(sub: dict[str, Any]) -> list[str]:
    t = sub.get("type")
    return t if isinstance(t, list) else [t] if t else []


def _matches(value: Any, types: list[str]) -> bool:
    for t in types:
        if t in ("integer", "number") and isinstance(value, bool):
            continue
        if isinstance(value, _TYPES.get(t, ())):
            return True
    return False


def _parse_string(value: Any, types: list[str]) -> Any:
    """A string given where the schema wants another type (``--config`` values) parsed as YAML when that
    yields the wanted type; anything else unchanged."""
    if isinstance(value, str) and types and "string" not in types:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if _matches(parsed, types):
            return parsed
    return value


def _coerce(node: Any, sub: dict[str, Any], root: dict[str, Any]) -> None:
    """Parse strings (as Snakemake's ``--config`` leaves them) where the schema wants another type."""
    sub = _resolve(sub, root)
    if isinstance(node, dict):
        for name, prop in (sub.get("properties") or {}).items():
            if name not in node:
                continue
            prop = _resolve(prop, root)
            value = node[name]
            types = _types_of(prop)
            node[name] = value = _parse_string(value, types)
            _coerce(value, prop, root)
    elif isinstance(node, list) and isinstance(sub.get("items"), dict):
        items = _resolve(sub["items"], root)
        types = _types_of(items)
        for i, value in enumerate(node):
            node[i] = value = _parse_string(value, types)
            _coerce(value, items, root)


CLASS_REF = "#/$defs/class_name"


def _label_space_problems(config: dict[str, Any], schema: dict[str, Any]) -> Iterator[str]:
    """Class names (schema ``$ref: '#/$defs/class_name'``) that are not in the configured label space."""
    from lidarlift.classes import LABEL_SPACES

    space_name = (config.get("labels") or {}).get("space", "nuscenes16")
    space = LABEL_SPACES.get(space_name)
    if space is None:
        return
    for path, value in _class_names(config, schema, schema, []):
        if value not in space.classes:
            yield (f"config key {'.'.join(path)}: unknown class {value!r} in label space {space_name} "
                   f"(labels.space); known: {', '.join(space.classes)}")


def _class_names(node: Any, sub: Any, root: dict[str, Any], path: list[str]) -> Iterator[tuple[list[str], str]]:
    """(key path, value) of every config value the schema declares a class name."""
    if not isinstance(sub, dict):
        return
    if sub.get("$ref") == CLASS_REF:
        if isinstance(node, str):
            yield path, node
        return
    for branch in sub.get("anyOf", []) + sub.get("oneOf", []):
        yield from _class_names(node, branch, root, path)
    sub = _resolve(sub, root)
    if isinstance(node, dict):
        props = sub.get("properties") or {}
        for name, value in node.items():
            if name in props:
                yield from _class_names(value, props[name], root, path + [str(name)])
            elif isinstance(sub.get("additionalProperties"), dict):
                yield from _class_names(value, sub["additionalProperties"], root, path + [str(name)])
    elif isinstance(node, list) and isinstance(sub.get("items"), dict):
        for i, value in enumerate(node):
            yield from _class_names(value, sub["items"], root, path + [str(i)])


def _with_defaults(validator_cls: Any) -> Any:
    """A validator class that fills ``default`` values into objects as it validates them."""
    from jsonschema import validators

    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: dict[str, Any], instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if isinstance(prop, dict) and "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_cls, {"properties": set_defaults})


def _describe(error: Any, prefix: str = "") -> str:
    """``config key a.b: <problem>`` for one jsonschema error (``prefix``: the section validated)."""
    path = ([prefix] if prefix else []) + [str(p) for p in error.absolute_path]
    message = error.message
    if error.validator == "additionalProperties":
        allowed = sorted((error.schema.get("properties") or {}).keys())
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        if extra:
            where = ".".join(path)
            keys = ", ".join(f"{where + '.' if where else ''}{k}" for k in extra)
            return f"config key {keys}: unknown key (allowed in {where or 'the top level'}: {', '.join(allowed)})"
    if error.validator == "required":
        missing = message.split("'")[1] if "'" in message else message
        path = path + [missing]
        message = "is required but missing"
    return f"config key {'.'.join(path) or '(top level)'}: {message}"
