"""Reports as PDF (fpdf2, built-in Helvetica: no fonts fetched).

The quarterly completion report is a one-page summary; every other report prints its header
facts, its summary and its whole table, so a regulator gets the same rows as in the CSV.
"""

from __future__ import annotations

from typing import Any

from fpdf import FPDF
from fpdf.enums import WrapMode

from ota_server.regulator.common import RegulatorReport, cell_text

TITLES = {
    "population": "population details",
    "completion": "quarterly completion report",
    "vin-status": "weekly VIN-level status",
    "notices": "owner-notification log",
    "type-approval": "type-approval record (R156) of the remedy release",
}
_FONT_PT = 7
_WIDEST_MM = 60.0  # a column is never sized wider; longer values (sha256) wrap
_PADDING_MM = 3.0


def _latin1(text: object) -> str:
    return str(text).encode("latin-1", "replace").decode("latin-1")


def report_pdf(report: RegulatorReport) -> bytes:
    """The report in PDF: the completion summary page, or header, summary and table for the others."""
    if report.kind == "completion":
        return completion_pdf(report)
    return table_pdf(report)


def _document(report: RegulatorReport, orientation: str) -> FPDF:
    title = f"Recall {report.meta['recall_number']}: {TITLES.get(report.kind, report.kind)}"
    pdf = FPDF(orientation=orientation, format="A4")
    pdf.set_title(_latin1(title))
    pdf.set_creator("ota_server")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, _latin1(title), new_x="LMARGIN", new_y="NEXT")
    return pdf


def _flat(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Nested header facts as ``a.b: value`` lines."""
    if isinstance(value, dict):
        return [line for key, inner in value.items() for line in _flat(f"{prefix}.{key}" if prefix else key, inner)]
    if isinstance(value, list):
        return [(prefix, ", ".join(cell_text(item) for item in value))]
    return [(prefix, cell_text(value))]


def _facts(pdf: FPDF, heading: str, facts: dict[str, Any]) -> None:
    lines = _flat("", facts)
    if not lines:
        return
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 8, heading, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    for key, value in lines:
        pdf.multi_cell(0, 5, _latin1(f"{key}: {value}"), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)


def _same_on_every_row(report: RegulatorReport, cells: list[list[str]]) -> dict[str, str]:
    """Columns with one value throughout (the release's hashes in type-approval): printed once, above."""
    if len(cells) < 2:
        return {}
    return {
        column: cells[0][i] for i, column in enumerate(report.columns) if all(line[i] == cells[0][i] for line in cells)
    }


def table_pdf(report: RegulatorReport) -> bytes:
    """Landscape pages: header facts, summary, then every row under repeated column headings."""
    pdf = _document(report, "landscape")
    _facts(pdf, "RegulatorReport", {k: v for k, v in report.meta.items() if k != "recall_number"})
    _facts(pdf, "Summary", report.summary)
    cells = [[cell_text(row.get(column)) for column in report.columns] for row in report.rows]
    constant = _same_on_every_row(report, cells)
    _facts(pdf, "Same on every row", constant)
    keep = [i for i, column in enumerate(report.columns) if column not in constant]
    pdf.set_font("Helvetica", size=_FONT_PT)
    widths = [
        min(_WIDEST_MM, max(pdf.get_string_width(text) for text in [report.columns[i], *(line[i] for line in cells)]))
        + _PADDING_MM
        for i in keep
    ]
    width = min(sum(widths), pdf.epw)
    with pdf.table(
        col_widths=widths, width=width, align="LEFT", wrapmode=WrapMode.CHAR, text_align="LEFT", line_height=4
    ) as table:
        heading = table.row()
        for i in keep:
            heading.cell(_latin1(report.columns[i]))
        for line in cells:
            row = table.row()
            for i in keep:
                row.cell(_latin1(line[i]))
    if not cells:
        pdf.cell(0, 6, "(no rows)", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def completion_pdf(report: RegulatorReport) -> bytes:
    meta, summary = report.meta, report.summary
    pdf = _document(report, "portrait")
    pdf.set_font("Helvetica", size=11)
    for line in (
        meta["title"],
        f"Quarter {meta['quarter']} ({meta['period_start'][:10]} to {meta['period_end'][:10]}, end exclusive)",
        f"Campaign {meta['campaign_id']}; generated {meta['generated_at']}",
    ):
        pdf.cell(0, 7, _latin1(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    lines = [
        ("Vehicles involved", summary["involved"]),
        ("Remedied over the air", summary["remedied_ota"]),
        ("Remedied at a dealer", summary["remedied_at_dealer"]),
        ("Inspected, remedy not needed", summary["inspected_not_needed"]),
        ("Unreachable", summary["unreachable"]),
        *((f"    {reason}", n) for reason, n in summary["unreachable_by_reason"].items()),
        ("Failed (awaiting retry or dealer)", summary["failed"]),
        ("Declined by owner", summary["declined"]),
        ("Withdrawn", summary["withdrawn"]),
        ("Still open", summary["open"]),
        ("Completion rate", f"{summary['completion_rate']:.1%}"),
    ]
    for label, value in lines:
        pdf.set_font("Helvetica", "B" if not label.startswith(" ") else "", 11)
        pdf.cell(110, 7, _latin1(label), border="B")
        pdf.cell(40, 7, _latin1(value), border="B", align="R", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
