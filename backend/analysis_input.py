"""The forms `settings.analysis` accepts, declared for the OpenAPI (the rules are `shared.analysis`'s).

An agent's analysis spec is validated and normalised by `shared.analysis.normalize_outcomes` and
`normalize_data_schema`; its stored form (`shared.agent_config.AnalysisConfig`) is not what a client
sends. These TypedDicts describe exactly what those functions accept, so the published schema tells
a client (and a fuzzer) the truth: a schema-valid spec is stored, an invalid one is a 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Required

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypeAliasType, TypedDict

from shared.agent_config import NUL_FREE

_MAX_ITEMS = 30  # shared.analysis: 1..30 outcomes, at most MAX_PROPERTIES (30) fields per object
OutcomeLabel = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
FieldName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
_Text = Annotated[str, Field(pattern=NUL_FREE)]
TypeName = Literal["string", "number", "integer", "boolean"]  # an array or object needs its items or fields

OutcomeList = Annotated[
    list[OutcomeLabel],
    Field(min_length=1, max_length=_MAX_ITEMS, json_schema_extra={"uniqueItems": True}),
]
OutcomeMap = Annotated[
    dict[OutcomeLabel, _Text],
    Field(
        min_length=1, max_length=_MAX_ITEMS, description="label -> what it means",
        json_schema_extra={"additionalProperties": False},
    ),
]
_Fields = Annotated[
    dict[FieldName, "FieldSpec"],
    Field(min_length=1, max_length=_MAX_ITEMS, json_schema_extra={"additionalProperties": False}),
]
_FORBID = ConfigDict(extra="forbid")  # every key the rules do not name is refused


@with_config(_FORBID)
class _Annotations(TypedDict, total=False):
    """Keys any field may carry: a description for the model; the others are accepted and ignored."""

    description: _Text
    title: Any
    required: Any
    additionalProperties: Any


@with_config(_FORBID)
class ScalarField(_Annotations, total=False):
    """A number, integer or boolean field."""

    type: Required[Literal["number", "integer", "boolean"]]
    items: Any
    properties: Any


@with_config(_FORBID)
class StringField(_Annotations, total=False):
    """A string field, optionally one of a list of values."""

    type: Required[Literal["string"]]
    enum: Annotated[list[_Text], Field(min_length=1)]
    items: Any
    properties: Any


@with_config(_FORBID)
class EnumField(_Annotations, total=False):
    """A string field given by its values alone (`type` left out, or null)."""

    type: None
    enum: Required[Annotated[list[_Text], Field(min_length=1)]]
    items: Any
    properties: Any


@with_config(_FORBID)
class ArrayField(_Annotations, total=False):
    """A list of values of one kind."""

    type: Required[Literal["array"]]
    items: Required[FieldSpec]
    properties: Any


@with_config(_FORBID)
class ObjectField(_Annotations, total=False):
    """An object of named fields (also the full form of the whole data schema)."""

    type: Required[Literal["object"]]
    properties: Required[_Fields]
    items: Any


FieldSpec = TypeAliasType(
    "FieldSpec", "TypeName | ScalarField | StringField | EnumField | ArrayField | ObjectField"
)
"""One field: a type name ("string"), or an object saying more about it."""

DataSchemaShorthand = Annotated[
    _Fields,
    Field(
        description='{"field": "type" or field spec, ...}',
        # `type` or `properties` at the top level means the full form instead.
        json_schema_extra={"propertyNames": {"not": {"enum": ["type", "properties"]}}},
    ),
]


@with_config(_FORBID)
class AnalysisSpecInput(TypedDict, total=False):
    """`settings.analysis` as sent: outcome labels (list or map) and the data schema (full or shorthand);
    either may be left out for the defaults."""

    outcomes: OutcomeList | OutcomeMap | None
    schema: ObjectField | DataSchemaShorthand | None
