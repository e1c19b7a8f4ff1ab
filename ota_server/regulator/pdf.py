"""Reports as PDF (fpdf2, built-in Helvetica: no fonts fetched).

The quarterly completion report is a one-page summary; every other report prints its header
facts, its summary and its whole table, so a regulator gets the same rows as in the CSV.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
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
    _pairs(pdf, _header_lines(report))
    pdf.ln(2)
    shown = {"manufacturer", "recall_number", "manufacturer_number", "title", "submitted_by", "submitted_on"}
    _facts(pdf, "Report", {k: v for k, v in report.meta.items() if k not in shown})
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


def _header_lines(report: RegulatorReport) -> list[tuple[str, str]]:
    meta = report.meta
    return [
        ("Manufacturer", meta.get("manufacturer", "")),
        ("Regulator's recall number", meta["recall_number"]),
        ("Manufacturer's recall number", meta.get("manufacturer_number") or "(none)"),
        ("Recall", meta["title"]),
        ("Submitted by", meta.get("submitted_by", "")),
        ("Date", meta.get("submitted_on", meta["generated_at"][:10])),
    ]


def _last_day(period_end: str) -> str:
    """The last day a period covers (its end is exclusive)."""
    return (datetime.fromisoformat(period_end) - timedelta(days=1)).date().isoformat()


def _pairs(pdf: FPDF, lines: Sequence[tuple[str, object]]) -> None:
    for label, value in lines:
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(62, 6, _latin1(label))
        pdf.set_font("Helvetica", size=10)
        pdf.multi_cell(0, 6, _latin1(cell_text(value)), new_x="LMARGIN", new_y="NEXT")


def completion_pdf(report: RegulatorReport) -> bytes:
    """One page: who files it, for which recall and quarter, owner notification, then each measure
    cumulative and in the quarter."""
    meta, summary = report.meta, report.summary
    pdf = _document(report, "portrait")
    end_note = "" if meta.get("period_complete", True) else ", to date"
    _pairs(
        pdf,
        [
            *_header_lines(report),
            (
                "Quarter",
                f"{meta['quarter']} ({meta['period_start'][:10]} to {_last_day(meta['period_end'])}{end_note})",
            ),
            ("Owner notification began", meta.get("owner_notification_began") or "not yet"),
            ("Owner notification completed", meta.get("owner_notification_completed") or "not yet"),
            ("Completion rate", f"{summary['completion_rate']:.1%}"),
        ],
    )
    pdf.ln(3)
    labels = {
        "involved": "Vehicles involved",
        "owners_notified": "Owners notified",
        "owners_not_notified": "Owners not yet notified",
        "remedied_ota": "Remedied over the air",
        "remedied_at_dealer": "Remedied at a dealer",
        "inspected_not_needed": "Inspected, remedy not needed",
        "failed": "Update failed (awaiting retry or dealer)",
        "declined": "Declined by owner",
        "withdrawn": "Withdrawn (recall cancelled)",
        "open": "Not yet remedied",
        "remedies_confirmed_by_manifest": "Remedies confirmed by the car's manifest",
    }
    pdf.set_font("Helvetica", size=9)
    with pdf.table(col_widths=(110, 35, 35), width=180, align="LEFT", line_height=5) as table:
        heading = table.row()
        for text in ("Measure", "Cumulative", "In the quarter"):
            heading.cell(text)
        for row in report.rows:
            measure = str(row["measure"])
            if measure.startswith("unreachable_"):
                label = f"Unreachable: {measure.removeprefix('unreachable_')}"
            elif measure.startswith("removed: "):
                label = f"Removed from the population: {measure.removeprefix('removed: ')}"
            else:
                label = labels.get(measure, measure)
            line = table.row()
            line.cell(_latin1(label))
            line.cell(cell_text(row["cumulative"]))
            line.cell(cell_text(row.get("in_quarter")) or "-")
    return bytes(pdf.output())
