"""Charts drawn on the server as SVG; each comes with the table it was drawn from."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from tallygate.ui.html import Html, Table, esc, text_of

WIDTH, HEIGHT, PAD = 760, 120, 28


def bars(title: str, points: Sequence[tuple[str, Decimal | int]], unit: str = "") -> Html:
    """A column chart of ``points`` (label, value); every bar names its value on hover."""
    top = max((Decimal(v) for _, v in points), default=Decimal(0))
    n = max(len(points), 1)
    step = (WIDTH - PAD) / n
    width = min(max(step * 0.8, 1.0), 48.0)
    parts = [f'<svg role="img" aria-label="{esc(title)}" viewBox="0 0 {WIDTH} {HEIGHT + 20}" '
             f'width="{WIDTH}" height="{HEIGHT + 20}" style="max-width:100%" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{PAD}" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" stroke="#b8c0cc"/>',
             f'<text x="{PAD}" y="12">max {esc(text_of(top))}{esc(unit)}</text>']
    for i, (label, value) in enumerate(points):
        h = 0.0 if top == 0 else float(Decimal(value) / top) * (HEIGHT - 22)
        x = PAD + i * step
        parts.append(f'<rect x="{x:.1f}" y="{HEIGHT - h:.1f}" width="{width:.1f}" '
                     f'height="{h:.1f}" fill="#3b6fd8"><title>{esc(label)}: '
                     f'{esc(text_of(value))}{esc(unit)}</title></rect>')
    if points:
        parts.append(f'<text x="{PAD}" y="{HEIGHT + 14}">{esc(points[0][0])}</text>')
        parts.append(f'<text x="{WIDTH}" y="{HEIGHT + 14}" text-anchor="end">'
                     f'{esc(points[-1][0])}</text>')
    parts.append("</svg>")
    return Html("".join(parts))


def ranking(title: str, points: Sequence[tuple[str, Decimal | int]], unit: str = "") -> Html:
    """Horizontal bars, one per labelled group (the top customers, the top models)."""
    top = max((Decimal(v) for _, v in points), default=Decimal(0))
    row, label_w, bar_w = 22, 170, WIDTH - 170 - 150
    tall = max(len(points), 1) * row
    parts = [f'<svg role="img" aria-label="{esc(title)}" viewBox="0 0 {WIDTH} {tall}" '
             f'width="{WIDTH}" style="max-width:100%" height="{tall}" '
             'xmlns="http://www.w3.org/2000/svg">']
    for i, (label, value) in enumerate(points):
        w = 0.0 if top == 0 else float(Decimal(value) / top) * bar_w
        y = i * row
        shown = label if len(label) <= 26 else label[:25] + "…"
        parts.append(f'<text x="0" y="{y + 15}">{esc(shown)}</text>'
                     f'<rect x="{label_w}" y="{y + 4}" width="{max(w, 1.0):.1f}" height="14" '
                     f'fill="#3b6fd8"><title>{esc(label)}: {esc(text_of(value))}{esc(unit)}'
                     f'</title></rect><text x="{label_w + max(w, 1.0) + 6:.1f}" y="{y + 15}">'
                     f'{esc(text_of(value))}{esc(unit)}</text>')
    parts.append("</svg>")
    return Html("".join(parts))


def meter(used: Decimal, limit: Decimal | None) -> Html:
    """A budget bar: the share of ``limit`` used (full and red when over)."""
    if limit is None or limit <= 0:
        return Html(f"{esc(text_of(used))} (no budget)")
    share = min(float(used / limit), 1.0)
    color = "#b3261e" if used >= limit else "#3b6fd8"
    return Html(f'<svg width="160" height="12" role="img" aria-label="budget used">'
                f'<rect width="160" height="12" fill="#e6e9ee"/><rect width="{160 * share:.1f}" '
                f'height="12" fill="{color}"/></svg> {esc(text_of(used))} of '
                f'{esc(text_of(limit))}')


def chart_with_table(title: str, table: Table, points: Sequence[tuple[str, Decimal | int]],
                     query: Sequence[tuple[str, str]], unit: str = "", *,
                     ranked: bool = False) -> Html:
    chart = (ranking if ranked else bars)(title, points, unit)
    return Html(f"<h2>{esc(title)}</h2>{chart}<details><summary>"
                f"{esc(title)} as a table</summary>{table.html(query)}</details>")
