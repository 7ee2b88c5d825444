"""The base of every request model, and the field types they share.

A model accepts every field IBKR's documents name for its object (the 2.29 and 2.13 schemas
and their examples) and refuses any other field by name. Where the documents spell one field
in two ways, the model lists the older spelling in `ALIASES` and sends the 2.29 name. Where
IBKR's 2.29 schema bounds the number of fields of an object (`maxProperties`), `MAX_FIELDS`
says so and more are refused, as IBKR's validation would.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from worker.ibkr.instructions import values


def text(min_length: int, max_length: int | None = None) -> Any:
    """A string field of `min_length..max_length` characters."""
    return Field(min_length=min_length, max_length=max_length)


def _number(rule: values.NumberRule) -> BeforeValidator:
    return BeforeValidator(lambda value: values.read_number(value, rule))


ClientInstructionId = Annotated[int, BeforeValidator(values.read_client_instruction_id)]
InstructionId = Annotated[int, BeforeValidator(values.read_instruction_id)]
ReferenceId = Annotated[int, BeforeValidator(values.read_reference_id)]
Conid = Annotated[int, BeforeValidator(values.read_conid)]
Count = Annotated[int, BeforeValidator(values.read_count)]
Amount = Annotated[Decimal, _number(values.AMOUNT)]
Quantity = Annotated[Decimal, _number(values.QUANTITY)]
Price = Annotated[Decimal, _number(values.PRICE)]
Percentage = Annotated[Decimal, _number(values.PERCENTAGE)]
Flag = Annotated[bool | str, BeforeValidator(values.read_flag)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
AccountId = Annotated[str, text(1, 32)]
IsoDate = Annotated[str, AfterValidator(values.check_date)]
IsoDateTime = Annotated[str, AfterValidator(values.check_datetime)]
DateOrDateTime = Annotated[str, AfterValidator(values.check_date_or_datetime)]


class FieldProblem(ValueError):
    """Raised inside model validators to name the offending sub-field (`""`: the object)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


class Model(BaseModel):
    """A JSON object of an IBKR request."""

    # Unknown fields are refused: a misspelt optional field (dateTimeToOccur) would otherwise
    # vanish silently and change what IBKR does, and the masking of sensitive fields in logs
    # relies on knowing every field a request can carry.
    model_config = ConfigDict(extra="forbid", strict=False, str_strip_whitespace=False)

    #: Other spellings IBKR's documents use for a field: {older name: the 2.29 name we send}.
    ALIASES: ClassVar[Mapping[str, str]] = {}
    #: The most fields the object may have (the 2.29 schema's maxProperties); None: no bound.
    MAX_FIELDS: ClassVar[int | None] = None

    @classmethod
    def field_count(cls, data: Mapping[Any, Any]) -> tuple[int, str]:
        """How many fields the object will have when sent, and a note on how they are counted."""
        return len(data), ""

    @model_validator(mode="before")
    @classmethod
    def _canonical_names(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        count, note = cls.field_count(data)
        if cls.MAX_FIELDS is not None and count > cls.MAX_FIELDS:
            raise FieldProblem(
                "",
                f"has {count} fields{note}; IBKR accepts at most {cls.MAX_FIELDS} here "
                "(maxProperties of its schema)",
            )
        if not cls.ALIASES:
            return data
        renamed: dict[Any, Any] = {}
        for key, value in data.items():
            name = cls.ALIASES.get(key, key) if isinstance(key, str) else key
            if name != key and name in data:
                raise FieldProblem(
                    str(key),
                    f"is the older spelling of {name}, which is given too; send only {name}",
                )
            renamed[name] = value
        return renamed

    @classmethod
    def canonical_name(cls, name: str) -> str:
        """The 2.29 name of field `name` (itself unless it is an older spelling)."""
        return cls.ALIASES.get(name, name)


class Instruction(Model):
    """One instruction object; `clientInstructionId` may be left for the worker to assign."""

    clientInstructionId: ClientInstructionId | None = None

    @classmethod
    def field_count(cls, data: Mapping[Any, Any]) -> tuple[int, str]:
        if data.get("clientInstructionId") is not None:
            return len(data), ""
        # The worker adds a clientInstructionId when the request has none.
        return len(data) + 1, " (counting the clientInstructionId the worker adds)"
