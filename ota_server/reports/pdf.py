"""A one-page PDF summary of the quarterly completion report (fpdf2, built-in Helvetica: no fonts fetched)."""

from __future__ import annotations

from fpdf import FPDF

from ota_server.reports.common import Report


def _latin1(text: object) -> str:
    return str(text).encode("latin-1", "replace").decode("latin-1")


def completion_pdf(report: Report) -> bytes:
    meta, summary = report.meta, report.summary
    pdf = FPDF(format="A4")
    pdf.set_title(_latin1(f"Recall {meta['recall_number']} completion {meta['quarter']}"))
    pdf.set_creator("ota_server")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(
        0, 10, _latin1(f"Recall {meta['recall_number']}: quarterly completion report"), new_x="LMARGIN", new_y="NEXT"
    )
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
