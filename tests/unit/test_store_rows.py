"""The store's rows are the tables' rows: one field per column, in the table's order, each
with the column's constant default, and a row read back equal to its values."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from worker.store.database import key_of, table_of
from worker.store.rows import ROW_TYPES, ClientInstruction, Row, Submission, columns, values_of


@pytest.mark.parametrize("row_type", ROW_TYPES, ids=lambda t: t.__name__)
def test_each_row_type_has_its_tables_columns_in_order(row_type: type[Row]) -> None:
    table = table_of(row_type)
    assert columns(row_type) == tuple(column.key for column in table.columns)
    assert key_of(row_type) in columns(row_type)


@pytest.mark.parametrize("row_type", ROW_TYPES, ids=lambda t: t.__name__)
def test_a_field_defaults_as_its_column_does(row_type: type[Row]) -> None:
    table = table_of(row_type)
    for field in fields(row_type):
        if field.name not in table.c:
            continue
        column = table.c[field.name]
        if column.default is not None:
            assert field.default == column.default.arg, field.name  # type: ignore[union-attr]
        elif column.nullable:
            assert field.default is None, field.name
        elif not (column.primary_key and column.autoincrement is not False and field.default == 0):
            # A required value: the constructor asks for it.
            assert field.default is MISSING and field.default_factory is MISSING, field.name


def test_links_are_not_columns() -> None:
    assert "submission" not in columns(ClientInstruction)
    assert "members" not in columns(Submission)
    row = ClientInstruction(
        client_instruction_id=1, instruction_type="X", status="RECEIVED", created_at=0, updated_at=0
    )  # type: ignore[arg-type]
    assert len(values_of(row)) == len(table_of(ClientInstruction).columns)
