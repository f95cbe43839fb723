"""A small HTML helper: escaping, tables (each also served as CSV) and the page frame.

Everything the browser needs is in the page itself (inline CSS, one tiny inline script
for the copy button): no CDN, no build step, nothing fetched from elsewhere.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from html import escape
from typing import Any
from urllib.parse import urlencode

from tallygate.event import format_decimal


class Html(str):
    """Text that is HTML already (built by this module's helpers): not escaped again."""


def esc(value: Any) -> Html:
    if isinstance(value, Html):
        return value
    return Html(escape(text_of(value)))


def text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format_decimal(value)
    return str(value)


@dataclass(frozen=True, slots=True)
class Cell:
    """A table cell whose page form differs from its CSV text (a link, a form)."""
    text: str
    html: Html


def link(href: str, text: Any) -> Cell:
    return Cell(text_of(text), Html(f'<a href="{esc(href)}">{esc(text)}</a>'))


@dataclass(slots=True)
class Table:
    name: str            # the ?csv= name
    columns: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)
    empty: str = "nothing here"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([c.text if isinstance(c, Cell) else text_of(c) for c in row])
        return out.getvalue()

    def html(self, query: Iterable[tuple[str, str]] = ()) -> Html:
        href = "?" + urlencode([*[(k, v) for k, v in query if k != "csv"], ("csv", self.name)])
        head = "".join(f"<th>{esc(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{c.html if isinstance(c, Cell) else esc(c)}</td>"
                             for c in row) + "</tr>" for row in self.rows)
        if not self.rows:
            body = (f'<tr><td colspan="{len(self.columns)}" class="empty">'
                    f'{esc(self.empty)}</td></tr>')
        return Html(f'<div class="table" id="t-{esc(self.name)}"><table data-table="'
                    f'{esc(self.name)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
                    f'</table><a class="csv" href="{esc(href)}">CSV</a></div>')


def csrf_field(token: str) -> Html:
    return Html(f'<input type="hidden" name="csrf" value="{esc(token)}">')


def form(action: str, csrf: str, inner: str, button: str, *, cls: str = "") -> Html:
    return Html(f'<form method="post" action="{esc(action)}" class="{cls}">{csrf_field(csrf)}'
                f'{inner}<button type="submit">{esc(button)}</button></form>')


NAV = (("Overview", "/ui"), ("Customers", "/ui/customers"), ("Calls", "/ui/calls"),
       ("Keys and teams", "/ui/keys"),
       ("Billing health", "/ui/billing"), ("Models", "/ui/models"))

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:8px 20px;display:flex;gap:18px;align-items:center}
header a{color:#cfd8e3;text-decoration:none}header a.on{color:#fff;font-weight:600}
header .who{margin-left:auto;color:#9aa7b6}header form{display:inline}
main{padding:16px 22px;max-width:1200px}h1{font-size:20px;margin:6px 0 12px}
h2{font-size:16px;margin:22px 0 8px}section{background:#fff;border:1px solid #e1e5ea;
border-radius:6px;padding:10px 14px;margin:0 0 14px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;
padding:4px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}th{background:#f0f2f5}
td.empty{color:#8a94a3}.table{margin:6px 0;overflow-x:auto}a.csv{font-size:12px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border:1px solid #e1e5ea;
border-radius:6px;padding:8px 14px;min-width:140px}.card b{display:block;font-size:20px}
.risk b{color:#b3261e}.flash{background:#e8f4ea;border:1px solid #9cc9a5;padding:8px 12px;
border-radius:6px}.error{background:#fbeaea;border-color:#e0a3a3}
input,select{padding:3px 6px}form.inline{display:inline}button{cursor:pointer}
code.key{background:#fff6d6;padding:4px 8px;font-size:15px}svg text{font-size:11px}
.ranges a{margin-right:10px}
"""

COPY_SCRIPT = """<script>
for (const b of document.querySelectorAll('button[data-copy]')) {
  b.addEventListener('click', () => {
    const t = document.getElementById(b.dataset.copy).textContent;
    navigator.clipboard.writeText(t).then(() => { b.textContent = 'Copied'; });
  });
}
</script>"""


def page(title: str, body: str, *, path: str, who: str | None, csrf: str | None,
         nav: bool = True) -> Html:
    links = ""
    if nav and who is not None:
        shown = NAV if who == "master key" else NAV[:1]
        links = "".join(f'<a href="{href}" class="{"on" if href == path else ""}">{name}</a>'
                        for name, href in shown)
        if csrf is not None:
            links += (f'<span class="who">signed in with the {esc(who)}</span>'
                      + form("/ui/logout", csrf, "", "Log out", cls="inline"))
    return Html(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{esc(title)} · tallygate</title><style>{STYLE}</style></head>
<body><header><b>tallygate</b>{links}</header><main><h1>{esc(title)}</h1>{body}</main>
{COPY_SCRIPT}</body></html>""")
