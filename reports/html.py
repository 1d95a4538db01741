"""One self-contained HTML page (inline CSS, figures as data URIs): opens anywhere, offline."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import re

from reports.section import Section

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
figure { margin: 1em 0 2em; }
figcaption { font-size: 0.8em; color: #555; font-family: monospace; }
img { max-width: 100%; }
"""


def _code(text: str) -> str:
    """Markdown's `code` spans (in escaped text) as <code> elements."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def render_html(sections: list[Section]) -> str:
    """The page: a contents list (anchors, and each table's CSV beside the page), then the sections."""
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    toc = "".join(f'<li><a href="#{s.name}">{html.escape(s.title.split(" (")[0])}</a> '
                  f'(<a href="{s.name}.csv">CSV</a>)</li>' for s in sections)
    body = [f"<h1>vit-edge-suite report</h1><p>Generated {created} from result records.</p><ul>{toc}</ul>"]
    for s in sections:
        body.append(f'<h2 id="{s.name}">{html.escape(s.title)}</h2>')
        body.append(s.table.to_html(index=False, border=0) if not s.table.empty else
                    f"<p><em>{_code(html.escape(s.empty_note))}</em></p>")
        for f in s.figures:
            data = base64.b64encode(f.path.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(f.path.stem)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>vit-edge-suite report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
