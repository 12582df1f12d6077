"""The JSON schemas of mgd's configs and their validation (torch-free).

``train.schema.yaml`` describes an `mgd train` config, including one ``$defs`` entry per method
(its parameters, types, enums and defaults); ``workflow.schema.yaml`` describes the workflow config
and references the train schema's method definitions for its ``method_params``; ``cache.schema.yaml``
describes an `mgd cache` config (views, teachers, storage layout). Validation differs
from plain jsonschema in three ways: integers are strict (``4.0`` is not an integer), the error is
one line naming the dotted key (``config key method_params.mgd.lamda_image: unknown key ...``),
and the result is a copy with the schema's defaults filled in. A schema may word its own error
with ``errorMessage`` (the ajv-errors keyword; jsonschema ignores it).
"""

from __future__ import annotations

import copy
import functools
import re
from importlib import resources
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

from mgd.errors import ConfigError

SCHEMA_FILES = {"train": "train.schema.yaml", "workflow": "workflow.schema.yaml", "cache": "cache.schema.yaml"}
#: base of the schemas' $id: a reference like "train.schema.yaml#/$defs/mgd_params" resolves in the
#: registry below (nothing is ever fetched; .invalid is a reserved domain)
BASE_URI = "https://mgd.invalid/schemas/"


def _is_integer(checker, instance) -> bool:
    # JSON Schema counts 4.0 as an integer; a config value 4.0 is almost always a mistake.
    return isinstance(instance, int) and not isinstance(instance, bool)


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


@functools.cache
def load_schema(name: str) -> dict:
    """The parsed schema ``name`` ("train", "workflow" or "cache"), with its $id."""
    schema = yaml.safe_load(resources.files("mgd").joinpath("schemas", SCHEMA_FILES[name]).read_text())
    return {"$id": BASE_URI + SCHEMA_FILES[name], **schema}


@functools.cache
def registry() -> Registry:
    """Every schema under its file name, so that one can reference another's ``$defs``."""
    return Registry().with_resources(
        (BASE_URI + file, Resource.from_contents(load_schema(name))) for name, file in SCHEMA_FILES.items()
    )


@functools.cache
def validator(name: str) -> jsonschema.protocols.Validator:
    return StrictValidator(load_schema(name), registry=registry())


def resolver(name: str):
    return registry().resolver(BASE_URI + SCHEMA_FILES[name])


def _property_names(schema: dict, schema_resolver) -> set[str]:
    """Keys a (composed) object schema declares: its properties and those of its allOf / $ref parts."""
    names = set(schema.get("properties", {}))
    if "$ref" in schema:
        resolved = schema_resolver.lookup(schema["$ref"])
        names |= _property_names(resolved.contents, resolved.resolver)
    for part in schema.get("allOf", []):
        names |= _property_names(part, schema_resolver)
    return names


def _nodes(node: Any):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _nodes(child)


def _resolver_of(sub_schema: dict):
    """The resolver of the schema file ``sub_schema`` is part of (its local $refs resolve there)."""
    for name in SCHEMA_FILES:
        if any(node is sub_schema for node in _nodes(load_schema(name))):
            return resolver(name)
    return resolver("train")


def _unexpected(error: jsonschema.ValidationError) -> list[str] | None:
    """The keys an additional/unevaluated-properties error rejects (None for other errors)."""
    if error.validator in ("additionalProperties", "unevaluatedProperties") and error.validator_value is False:
        return re.findall(r"'([^']+)'", error.message.split("(", 1)[-1])
    return None


def _misleading(error: jsonschema.ValidationError) -> bool:
    # A declared key whose value is invalid counts as unevaluated too: its own error says more.
    unexpected = _unexpected(error)
    return bool(unexpected) and set(unexpected) <= _property_names(error.schema, _resolver_of(error.schema))


def error_message(error: jsonschema.ValidationError) -> str:
    """``config key a.b.c: what is wrong`` for one schema error."""
    path = [str(part) for part in error.absolute_path]
    unexpected = _unexpected(error)
    if unexpected is not None:
        known = sorted(_property_names(error.schema, _resolver_of(error.schema)))
        key = ".".join(path + unexpected[:1])
        return f"config key {key}: unknown key" + (f" (known: {', '.join(known)})" if known else "")
    if isinstance(error.schema, dict) and "errorMessage" in error.schema:  # a schema's own wording
        return f"config key {'.'.join(path)}: {error.instance!r} {error.schema['errorMessage']}"
    return f"config key {'.'.join(path) or '<top level>'}: {error.message}"


def fill_defaults(instance: Any, schema: dict, schema_resolver) -> None:
    """Insert the schema's defaults into ``instance`` (in place), like snakemake's validate.

    Follows ``properties``, ``additionalProperties``, ``allOf``, ``if``/``then``/``else`` and
    references within the same schema file; a definition referenced from another file (the
    workflow's ``method_params`` -> the train schema's methods) is validated, not filled, so the
    workflow keeps only the parameters a user set and their precedence stays intact.
    """
    ref = schema.get("$ref")
    if ref is not None and ref.startswith("#"):
        resolved = schema_resolver.lookup(ref)
        fill_defaults(instance, resolved.contents, resolved.resolver)
    for part in schema.get("allOf", []):
        fill_defaults(instance, part, schema_resolver)
    if "if" in schema:
        matches = StrictValidator(schema["if"], registry=registry()).is_valid(instance)
        branch = schema.get("then" if matches else "else")
        if branch is not None:
            fill_defaults(instance, branch, schema_resolver)
    if not isinstance(instance, dict):
        return
    properties = schema.get("properties", {})
    for key, sub_schema in properties.items():
        if key not in instance and isinstance(sub_schema, dict) and "default" in sub_schema:
            instance[key] = copy.deepcopy(sub_schema["default"])
        if key in instance and isinstance(sub_schema, dict):
            fill_defaults(instance[key], sub_schema, schema_resolver)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in properties:
                fill_defaults(value, extra, schema_resolver)


def validate(instance: dict, name: str) -> dict:
    """A copy of ``instance`` with defaults filled, or ConfigError naming the first bad key."""
    errors = list(validator(name).iter_errors(instance))
    error = jsonschema.exceptions.best_match([e for e in errors if not _misleading(e)] or errors)
    if error is not None:
        raise ConfigError(error_message(error))
    filled = copy.deepcopy(instance)
    fill_defaults(filled, load_schema(name), resolver(name))
    return filled


def method_defaults(method: str) -> dict[str, Any]:
    """The parameters of ``method`` with their schema defaults (the train schema's $defs entry)."""
    definition = load_schema("train")["$defs"][f"{method}_params"]
    params: dict = {}
    fill_defaults(params, definition, resolver("train"))
    return params
