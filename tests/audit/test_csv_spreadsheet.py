"""The CSV export as a real spreadsheet reads it: Debian's LibreOffice (headless)
converts it to xlsx, and no cell of the result is a formula, every event is one row, and
non-ASCII text arrives intact. A control file written the old way (a bare CR before
=9+9) shows that the same conversion does make a live formula of it."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from pamportal.audit import offline
from pamportal.audit.models import AuditEvent

from .reports import LINE_BREAK_TARGETS, export_to, make_line_break_trail, make_trail

pytestmark = pytest.mark.django_db
REPO = Path(__file__).resolve().parents[2]
NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
# The import setting the README documents: comma, double quote, UTF-8 (76), from line 1.
UTF8_IMPORT = "CSV:44,34,76,1"


def _soffice() -> str:
    """LibreOffice's soffice, installed by the project's script when missing (as root);
    else the test is skipped, saying why."""
    found = shutil.which("soffice") or shutil.which("libreoffice")
    if found:
        return found
    script = REPO / "tools" / "system_packages.sh"
    if script.exists() and os.geteuid() == 0:
        subprocess.run(["bash", str(script)], timeout=1200, check=False)
        found = shutil.which("soffice") or shutil.which("libreoffice")
        if found:
            return found
    reason = ("LibreOffice (Debian's libreoffice-calc-nogui) is not installed and could not be installed by "
              f"{script.relative_to(REPO)} (it {'is missing' if not script.exists() else 'needs root'})")
    print(reason)
    pytest.skip(reason)


def convert(soffice: str, files: list[Path], out: Path, profile: Path, infilter: str | None = None) -> None:
    command = [soffice, "--headless", "--norestore", f"-env:UserInstallation={profile.as_uri()}"]
    if infilter:
        command.append(f"--infilter={infilter}")
    command += ["--convert-to", "xlsx", "--outdir", str(out), *map(str, files)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    for each in files:
        assert (out / (each.stem + ".xlsx")).exists(), result.stdout + result.stderr


def read_xlsx(path: Path) -> tuple[list[list[str]], int]:
    """(rows of cell texts, number of formula cells) of the first sheet."""
    with zipfile.ZipFile(path) as book:
        shared = []
        if "xl/sharedStrings.xml" in book.namelist():
            for item in ElementTree.fromstring(book.read("xl/sharedStrings.xml")).findall("m:si", NS):
                shared.append("".join(t.text or "" for t in item.iter(f"{{{NS['m']}}}t")))
        sheet = ElementTree.fromstring(book.read("xl/worksheets/sheet1.xml"))
    rows, formulas = [], 0
    for row in sheet.iter(f"{{{NS['m']}}}row"):
        cells: list[str] = []
        for cell in row.findall("m:c", NS):
            column = 0
            for letter in cell.get("r").rstrip("0123456789"):
                column = column * 26 + ord(letter) - ord("A") + 1
            cells += [""] * (column - 1 - len(cells))  # empty cells are not written
            if cell.find("m:f", NS) is not None:
                formulas += 1
            value = cell.find("m:v", NS)
            inline = cell.find("m:is", NS)
            if cell.get("t") == "s" and value is not None:
                cells.append(shared[int(value.text)])
            elif inline is not None:
                cells.append("".join(t.text or "" for t in inline.iter(f"{{{NS['m']}}}t")))
            else:
                cells.append(value.text if value is not None else "")
        rows.append(cells)
    return rows, formulas


def test_libreoffice_reads_every_event_as_text_and_runs_nothing(admin_user, client, tmp_path):
    soffice = _soffice()
    make_trail(9)  # =HYPERLINK, +1+1, -2, @SUM, tab, quote, comma, ünïcödé at the start of cells
    make_line_break_trail(client)  # a failed login "x" CR "=9+9", CRLF, lone CR, U+2028, NEL...
    export, _, manifest = export_to(tmp_path / "export", fmt="csv")
    events = {e.position: e for e in AuditEvent.objects.filter(position__lte=manifest["upto_position"])}

    # The control: what csv.writer(lineterminator="\n") wrote before, a bare CR before =9+9.
    control = tmp_path / "control.csv"
    with control.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows([["position", "actor_name"], ["1", "x\r=9+9"]])

    started = time.monotonic()
    convert(soffice, [export, control], tmp_path / "default", tmp_path / "profile")  # the default import
    convert(soffice, [export], tmp_path / "utf8", tmp_path / "profile", UTF8_IMPORT)  # the documented setting
    print(f"LibreOffice conversions took {time.monotonic() - started:.1f}s")

    control_rows, control_formulas = read_xlsx(tmp_path / "default" / "control.xlsx")
    assert control_formulas == 1 and len(control_rows) == 3  # the bare CR made a row and a live formula

    for kind in ("default", "utf8"):
        rows, formulas = read_xlsx(tmp_path / kind / (export.stem + ".xlsx"))
        assert formulas == 0, kind
        assert len(rows) == manifest["count"] + 1, kind  # one row per event, as the manifest counts
        positions = [int(float(row[0])) for row in rows[1:]]
        assert positions == sorted(events), kind  # no event split into two rows
        for row in rows[1:]:
            for cell in row:  # nothing a spreadsheet could run starts any line of any cell
                for line in cell.splitlines():
                    assert line[:1] not in set("=+-@"), (kind, row)

    rows, _ = read_xlsx(tmp_path / "utf8" / (export.stem + ".xlsx"))
    assert rows[0] == list(offline.COLUMNS)  # the BOM is read as such, not as text in A1
    by_position = {int(float(row[0])): row for row in rows[1:]}
    for position, event in events.items():
        expected = offline.csv_escape(event.target).replace("\r\n", "\n").replace("\r", "\n")
        assert by_position[position][7].replace("\r\n", "\n").replace("\r", "\n") == expected
    targets = [row[7] for row in rows[1:]]
    assert LINE_BREAK_TARGETS[-1] in targets and "ünïcödé ✓ #8" in targets  # non-ASCII intact
    login = next(row for row in rows[1:] if row[7].startswith("user:x"))
    assert login[3] == "x\n'=9+9" and "18" not in login  # the failed login's username, as text
