"""Reading small spreadsheets (CSV and .xlsx) as lists of string dicts, with the standard library only.

The Lung-PET-CT-Dx clinical table ships as .xlsx; reading it through pandas would need openpyxl, which hf-cxr
does not depend on. An .xlsx file is a zip of XML parts, and a plain table needs only three of them: the
workbook (sheet order), its relationships (sheet file) and the shared strings. Every value comes back as the
text the cell shows for plain numbers and strings (formulas' cached values are used; dates stay serial numbers).
"""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree

_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PKG_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_CELL_REF = re.compile(r"([A-Z]+)(\d+)")


def _column_index(letters: str) -> int:
    index = 0
    for letter in letters:
        index = index * 26 + (ord(letter) - ord("A") + 1)
    return index - 1


def _number_text(text: str) -> str:
    """'63.0' -> '63', '58.5' -> '58.5': numbers as a person reads them in the sheet."""
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else repr(value)


def read_xlsx_rows(path: Path | str) -> list[list[str]]:
    """The first worksheet of an .xlsx file as rows of cell texts (empty cells are ''). Raises `ValueError` naming
    the file when it is not a zip archive (not an .xlsx) or its workbook has no sheets; `KeyError` when the archive
    lacks a workbook part it needs (`xl/workbook.xml`, its relationships or the first sheet)."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"'{path}': not an .xlsx file ({error})") from error
    with archive:
        names = set(archive.namelist())
        shared: list[str] = []
        if "xl/sharedStrings.xml" in names:
            root = ElementTree.fromstring(archive.read("xl/sharedStrings.xml"))
            shared = ["".join(t.text or "" for t in item.iter(f"{_MAIN}t")) for item in root.iter(f"{_MAIN}si")]
        workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
        first_sheet = next(workbook.iter(f"{_MAIN}sheet"), None)
        if first_sheet is None:
            raise ValueError(f"'{path}': workbook has no sheets")
        relations = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
        target = next(
            rel.get("Target", "")
            for rel in relations.iter(f"{_PKG_REL}Relationship")
            if rel.get("Id") == first_sheet.get(f"{_REL}id")
        )
        sheet_path = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
        sheet = ElementTree.fromstring(archive.read(sheet_path))
    rows: list[list[str]] = []
    for row in sheet.iter(f"{_MAIN}row"):
        cells: dict[int, str] = {}
        for position, cell in enumerate(row.iter(f"{_MAIN}c")):
            match = _CELL_REF.fullmatch(cell.get("r", ""))
            column = _column_index(match.group(1)) if match else position
            kind = cell.get("t", "n")
            value_node = cell.find(f"{_MAIN}v")
            raw = value_node.text if value_node is not None and value_node.text is not None else ""
            if kind == "s":
                text = shared[int(raw)] if raw else ""
            elif kind == "inlineStr":
                text = "".join(t.text or "" for t in cell.iter(f"{_MAIN}t"))
            elif kind == "b":
                text = "TRUE" if raw == "1" else "FALSE"
            elif kind == "n":
                text = _number_text(raw) if raw else ""
            else:  # "str" (formula result), "e" (error)
                text = raw
            cells[column] = text
        if cells:
            rows.append([cells.get(index, "") for index in range(max(cells) + 1)])
    return rows


def read_table(path: Path | str) -> list[dict[str, str]]:
    """A CSV or .xlsx table with a header row -> one dict per non-empty row (header -> cell text). Raises `ValueError`
    naming the file for a suffix other than .csv, .txt or .xlsx, for a table without any row (not even a header), and as
    `read_xlsx_rows` does for an .xlsx it cannot read; `FileNotFoundError` when `path` does not exist."""
    path = Path(path)
    if path.suffix.lower() == ".xlsx":
        rows = read_xlsx_rows(path)
    elif path.suffix.lower() in (".csv", ".txt"):
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    else:
        raise ValueError(f"'{path}': unsupported table format (use .csv or .xlsx)")
    if not rows:
        raise ValueError(f"'{path}': empty table")
    header = [name.strip() for name in rows[0]]
    return [
        {name: (row[index].strip() if index < len(row) else "") for index, name in enumerate(header)}
        for row in rows[1:]
        if any(cell.strip() for cell in row)
    ]
