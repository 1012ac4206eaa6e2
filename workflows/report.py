"""A report folder written atomically: one HTML page, its Markdown twin, CSV tables, PNG figures.

Usage::

    with ReportWriter("outputs/lecture", title="...") as rep:
        sec = rep.section("1. Data")
        sec.text("...")
        sec.table("ols_per_school", df, caption="...", max_rows=20)
        sec.figure("caterpillar_u0", fig, caption="...")
        rep.save_file("posterior_m1.nc", lambda path: dt.to_netcdf(path))
    # on success the folder replaces the previous report in one step

Everything is built in a hidden temporary folder next to the target (same file system). Only when
the whole report is written does it take the target's place: with Linux's ``renameat2`` and
``RENAME_EXCHANGE`` the old and the new folder are swapped atomically, then the old one is removed;
elsewhere the old folder is first renamed aside (and put back by the next run if a crash happened
between the two renames). A run that fails or is killed therefore leaves the previous report as it
was; its partial folder is removed on error, or by the next run when the process was killed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import html
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["ReportWriter", "Section", "atomic_replace_dir", "markdown_table"]

_PARTIAL = ".partial-"
_OLD = ".old-"


# ----------------------------------------------------------------------------- atomic folder swap


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux ``renameat2(..., RENAME_EXCHANGE)``; False when the
    system call is not available (other OS, old libc, file system without support)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_and_clean(target: Path) -> None:
    """Put back a previous report renamed aside by a run that died between its two renames, and
    remove partial folders left by runs that are no longer alive."""
    parent, name = target.parent, target.name
    if not parent.exists():
        return
    for p in parent.glob(f".{name}{_OLD}*"):
        pid = _pid_of(p.name)
        if pid is not None and _pid_alive(pid) and pid != os.getpid():
            continue
        if not target.exists():
            os.replace(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)
    for p in parent.glob(f".{name}{_PARTIAL}*"):
        pid = _pid_of(p.name)
        if pid is not None and _pid_alive(pid) and pid != os.getpid():
            continue
        shutil.rmtree(p, ignore_errors=True)


def _pid_of(name: str) -> int | None:
    m = re.search(r"-(\d+)-[^-]*$", name)
    return int(m.group(1)) if m else None


def atomic_replace_dir(new: Path, target: Path) -> None:
    """Make the finished folder ``new`` take the place of ``target`` (same parent directory).

    The previous ``target`` stays complete until the new one is in place: atomic exchange when the
    OS offers it, otherwise rename-aside then rename-in (recovered by :func:`recover_and_clean`)."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    if _renameat2_exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the previous report
        return
    old = target.parent / f".{target.name}{_OLD}{os.getpid()}-x"
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- rendering helpers


def _fmt(v: Any, digits: int) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 10 ** (-digits)):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}"
    return str(v)


def _format_frame(df: pd.DataFrame, digits: int, index: bool) -> tuple[list[str], list[list[str]]]:
    frame = df.reset_index() if index else df
    header = [str(c) for c in frame.columns]
    rows = [[_fmt(v, digits) for v in row] for row in frame.itertuples(index=False, name=None)]
    return header, rows


def markdown_table(df: pd.DataFrame, digits: int = 4, index: bool = False) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (floats with ``digits`` decimals)."""
    header, rows = _format_frame(df, digits, index)

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    num = [all(_is_num(r[k]) for r in rows) and rows for k in range(len(header))]
    lines = ["| " + " | ".join(esc(h) for h in header) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in num) + "|")
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _is_num(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return s == ""
    return True


def _html_table(df: pd.DataFrame, digits: int, index: bool) -> str:
    header, rows = _format_frame(df, digits, index)
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)]
    out.append("</tr></thead><tbody>")
    for r in rows:
        cells = "".join(
            f'<td class="num">{html.escape(c)}</td>' if _is_num(c) and c
            else f"<td>{html.escape(c)}</td>"
            for c in r
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _inline_html(text: str) -> str:
    """Escape text and render Markdown's `code` and **bold** inline."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return t


def _paragraphs_html(text: str) -> str:
    """Paragraphs separated by blank lines; lines starting with '- ' become a list."""
    out = []
    for para in re.split(r"\n\s*\n", text.strip()):
        lines = para.splitlines()
        if lines and all(ln.lstrip().startswith("- ") for ln in lines):
            items = "".join(f"<li>{_inline_html(ln.lstrip()[2:])}</li>" for ln in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{_inline_html(' '.join(lines))}</p>")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em}th{background:#f3f3f3}td.num{text-align:right;
font-variant-numeric:tabular-nums}pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}\
figcaption{font-size:.9em;color:#555}
.caption{font-size:.9em;color:#555}nav ol{columns:2}
"""


# ----------------------------------------------------------------------------- report model


@dataclass
class _Block:
    kind: str  # "text" | "pre" | "table" | "figure"
    payload: dict[str, Any]


@dataclass
class Section:
    """One section of the report; blocks are rendered in the order they are added."""

    title: str
    writer: ReportWriter
    blocks: list[_Block] = field(default_factory=list)

    def text(self, text: str) -> None:
        """A paragraph (blank lines separate paragraphs; '- ' lines make a list)."""
        self.blocks.append(_Block("text", {"text": text}))

    def pre(self, text: str, caption: str | None = None) -> None:
        """Preformatted text (a model summary, a command)."""
        self.blocks.append(_Block("pre", {"text": text, "caption": caption}))

    def table(
        self,
        name: str,
        df: pd.DataFrame,
        caption: str = "",
        max_rows: int | None = None,
        digits: int = 4,
        index: bool = False,
        columns: list[str] | None = None,
    ) -> Path:
        """Write ``df`` in full to ``tables/<name>.csv`` and show its first ``max_rows`` rows
        (all when None, none when 0) and only ``columns`` if given."""
        path = self.writer.path(f"tables/{name}.csv")
        df.to_csv(path, index=index)
        shown = df if columns is None else df[columns]
        shown = shown if max_rows is None else shown.head(max_rows)
        note = caption
        if max_rows == 0:
            note = f"{caption} ({len(df)} rows, in the CSV)".strip()
        elif max_rows is not None and len(df) > max_rows:
            note = f"{caption} (first {max_rows} of {len(df)} rows; all in the CSV)".strip()
        if columns is not None and len(columns) < df.shape[1]:
            note += f" ({len(columns)} of {df.shape[1]} columns shown)"
        self.blocks.append(
            _Block("table", {"name": name, "df": shown, "caption": note, "digits": digits,
                             "index": index, "csv": f"tables/{name}.csv"})
        )
        return path

    def figure(self, name: str, fig: Any, caption: str = "", dpi: int = 110) -> Path:
        """Save a matplotlib figure (or anything with ``savefig``) as ``figures/<name>.png``."""
        path = self.writer.path(f"figures/{name}.png")
        import matplotlib.pyplot as plt

        fig.savefig(path, dpi=dpi)
        mpl_fig = fig.get_viz("figure") if hasattr(fig, "get_viz") else fig
        plt.close(mpl_fig)
        self.blocks.append(_Block("figure", {"src": f"figures/{name}.png", "caption": caption}))
        return path


class ReportWriter:
    """Builds a report in a temporary folder and swaps it into place on success.

    Parameters
    ----------
    target : the report folder (created, or replaced as a whole).
    title : page title.
    """

    def __init__(self, target: str | os.PathLike, title: str) -> None:
        self.target = Path(target).resolve()
        self.title = title
        self.sections: list[Section] = []
        self.files: list[str] = []
        self.tmp: Path | None = None
        self.finished = False

    # context manager ------------------------------------------------------------------
    def __enter__(self) -> ReportWriter:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        recover_and_clean(self.target)
        self.tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.target.name}{_PARTIAL}{os.getpid()}-",
                             dir=self.target.parent)
        )
        os.chmod(self.tmp, 0o755)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            if not self.finished:
                shutil.rmtree(self.tmp, ignore_errors=True)
            return
        self.finish()

    def finish(self) -> Path:
        """Render the pages and swap the finished folder into place (once; also on exit)."""
        assert self.tmp is not None
        if self.finished:
            return self.target
        try:
            self._write_pages()
            _fsync_tree(self.tmp)
            atomic_replace_dir(self.tmp, self.target)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.finished = True
        return self.target

    # content ---------------------------------------------------------------------------
    def path(self, relative: str) -> Path:
        """Path of a file inside the report being built (parent folders created)."""
        if self.tmp is None:
            raise RuntimeError("ReportWriter must be used as a context manager")
        p = self.tmp / relative
        p.parent.mkdir(parents=True, exist_ok=True)
        if relative not in self.files:
            self.files.append(relative)
        return p

    def section(self, title: str) -> Section:
        """Start a new section."""
        sec = Section(title, self)
        self.sections.append(sec)
        return sec

    def save_file(self, relative: str, write: Callable[[Path], Any]) -> Path:
        """Write a data file (NetCDF, JSON, ...) with ``write(path)``."""
        p = self.path(relative)
        write(p)
        return p

    # rendering -------------------------------------------------------------------------
    def _write_pages(self) -> None:
        assert self.tmp is not None
        (self.tmp / "report.md").write_text(self.render_markdown(), encoding="utf-8")
        (self.tmp / "index.html").write_text(self.render_html(), encoding="utf-8")

    def render_markdown(self) -> str:
        """The report as Markdown (figures and CSVs linked by relative path)."""
        out = [f"# {self.title}", ""]
        out += [f"{k + 1}. [{s.title}](#{_anchor(s.title)})" for k, s in enumerate(self.sections)]
        out.append("")
        for s in self.sections:
            out += [f"## {s.title}", ""]
            for b in s.blocks:
                p = b.payload
                if b.kind == "text":
                    out += [p["text"].strip(), ""]
                elif b.kind == "pre":
                    if p["caption"]:
                        out += [f"*{p['caption']}*", ""]
                    out += ["```", p["text"].rstrip("\n"), "```", ""]
                elif b.kind == "table":
                    if p["caption"]:
                        out += [f"*{p['caption']}* ([CSV]({p['csv']}))", ""]
                    else:
                        out += [f"([CSV]({p['csv']}))", ""]
                    if len(p["df"]):
                        out += [markdown_table(p["df"], p["digits"], p["index"]), ""]
                elif b.kind == "figure":
                    out += [f"![{p['caption']}]({p['src']})", ""]
                    if p["caption"]:
                        out += [f"*{p['caption']}*", ""]
        return "\n".join(out)

    def render_html(self) -> str:
        """The report as one self-contained HTML page (figures linked as PNG files beside it)."""
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
            "<nav><ol>",
        ]
        out += [
            f'<li><a href="#{_anchor(s.title)}">{html.escape(s.title)}</a></li>'
            for s in self.sections
        ]
        out.append("</ol></nav>")
        for s in self.sections:
            out.append(f'<h2 id="{_anchor(s.title)}">{html.escape(s.title)}</h2>')
            for b in s.blocks:
                p = b.payload
                if b.kind == "text":
                    out.append(_paragraphs_html(p["text"]))
                elif b.kind == "pre":
                    if p["caption"]:
                        out.append(f'<p class="caption">{_inline_html(p["caption"])}</p>')
                    out.append(f"<pre>{html.escape(p['text'])}</pre>")
                elif b.kind == "table":
                    link = f'<a href="{p["csv"]}">CSV</a>'
                    cap = _inline_html(p["caption"]) + (" " if p["caption"] else "")
                    out.append(f'<p class="caption">{cap}({link})</p>')
                    if len(p["df"]):
                        out.append(_html_table(p["df"], p["digits"], p["index"]))
                elif b.kind == "figure":
                    out.append(
                        f'<figure><img src="{p["src"]}" alt="{html.escape(p["caption"])}">'
                        f"<figcaption>{_inline_html(p['caption'])}</figcaption></figure>"
                    )
        out.append("</body></html>")
        return "\n".join(out)


def _anchor(title: str) -> str:
    a = re.sub(r"[^a-z0-9 -]", "", title.lower()).strip().replace(" ", "-")
    return a or "section"


def _fsync_tree(root: Path) -> None:
    """Flush every file of the finished report to disk before it replaces the previous one."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
