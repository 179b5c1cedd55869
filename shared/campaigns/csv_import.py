"""Contacts from a CSV upload: `phone_number` required, `timezone` optional, every other column a
variable for the agent's `{placeholders}`. Every bad row is reported with its row number (the header
is row 1), so an operator can fix the file in one pass; nothing is created unless every row is good.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from shared.campaigns.config import MAX_CONTACTS, RESERVED_COLUMNS, VARIABLE_NAME, ContactIn, VariableValue

MAX_CSV_BYTES = 5 * 1024 * 1024
MAX_ERRORS = 200
"""A file that is wrong everywhere gets the first errors, not a megabyte of them."""


@dataclass(frozen=True)
class RowError:
    """What is wrong with one row (0: the file itself) and in which column."""

    row: int
    column: str | None
    message: str


class CsvRejected(ValueError):
    """The upload cannot be used; `errors` names every bad row (up to MAX_ERRORS)."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"{len(errors)} problem(s), first: row {errors[0].row}: {errors[0].message}")
        self.errors = errors


def parse_contacts(data: bytes, *, number_columns: Sequence[str] = ("phone_number",)) -> list[ContactIn]:
    """The file's contacts, in file order, or `CsvRejected` with every bad row. The number is read from
    the first of `number_columns` the header has (a do-not-call list may call it `number`)."""
    if len(data) > MAX_CSV_BYTES:
        raise CsvRejected([RowError(0, None, f"the file is larger than {MAX_CSV_BYTES // 1024 // 1024} MB")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvRejected(
            [RowError(0, None, f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from None
    if "\x00" in text:
        raise CsvRejected([RowError(0, None, "the file contains NUL characters: not a CSV text file")])
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise CsvRejected([RowError(0, None, "the file is empty")]) from None
    except csv.Error as exc:
        raise CsvRejected([RowError(1, None, f"not CSV: {exc}")]) from None
    number_column = next((c for c in number_columns if c in header), number_columns[0])
    errors = _header_errors(header, number_column, number_columns)
    if errors:
        raise CsvRejected(errors)
    contacts: list[ContactIn] = []
    first_row: dict[str, int] = {}
    try:
        for values in reader:
            row = reader.line_num
            if not any(v.strip() for v in values):
                continue  # a blank line
            if len(values) != len(header):
                errors.append(RowError(row, None, f"{len(values)} fields, the header has {len(header)}"))
                continue
            fields = {name: value.strip() for name, value in zip(header, values, strict=True)}
            contact = _contact(row, fields, number_column, errors)
            if contact is None:
                continue
            if contact.phone_number in first_row:
                errors.append(
                    RowError(
                        row,
                        number_column,
                        f"{contact.phone_number} is already in row {first_row[contact.phone_number]}",
                    )
                )
                continue
            first_row[contact.phone_number] = row
            contacts.append(contact)
            if len(errors) >= MAX_ERRORS:
                break
    except csv.Error as exc:
        errors.append(RowError(reader.line_num, None, f"not CSV: {exc}"))
    if not errors and not contacts:
        errors.append(RowError(0, None, "the file has a header but no contacts"))
    if not errors and len(contacts) > MAX_CONTACTS:
        errors.append(RowError(0, None, f"{len(contacts)} contacts; at most {MAX_CONTACTS} per campaign"))
    if errors:
        raise CsvRejected(errors[:MAX_ERRORS])
    return contacts


def _header_errors(header: list[str], number_column: str, number_columns: Sequence[str]) -> list[RowError]:
    errors = []
    if number_column not in header:
        if len(number_columns) == 1:
            errors.append(RowError(1, number_column, f"the header has no {number_column} column"))
        else:
            others = " or ".join(number_columns[1:])
            errors.append(RowError(1, None, f"the header needs a {number_columns[0]} (or {others}) column"))
    seen: set[str] = set()
    for name in header:
        if name in seen:
            errors.append(RowError(1, name, f"the column {name!r} appears twice"))
        seen.add(name)
        if name not in RESERVED_COLUMNS and name != number_column and not VARIABLE_NAME.match(name):
            errors.append(
                RowError(
                    1,
                    name,
                    f"column name {name!r} must be letters, digits and _ "
                    "(it becomes a {placeholder} in the agent's prompt)",
                )
            )
    return errors


def _contact(
    row: int, fields: dict[str, str], number_column: str, errors: list[RowError]
) -> ContactIn | None:
    variables: dict[str, VariableValue] = {
        k: v for k, v in fields.items() if k not in RESERVED_COLUMNS and k != number_column
    }
    try:
        return ContactIn(
            phone_number=fields[number_column], timezone=fields.get("timezone") or None, variables=variables
        )
    except ValidationError as exc:
        for problem in exc.errors():
            column = str(problem["loc"][0]) if problem["loc"] else None
            if column == "variables" and len(problem["loc"]) > 1:
                column = str(problem["loc"][1])
            message = str(problem["msg"]).removeprefix("Value error, ")
            value = fields.get(column or "", "")
            errors.append(RowError(row, column, f"{message} (got {value!r})" if value else message))
        return None
