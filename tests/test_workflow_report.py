"""The report writer (atomic folder swap) and the figures, without fitting any model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twolevel.models.tables.shrinkage import (
    caterpillar_table,
    describe_shrinkage,
    shrinkage_summary,
    shrinkage_table,
    t_ellipse,
)
from twolevel.workflows import plots
from twolevel.workflows.report import (
    ReportWriter,
    atomic_replace_dir,
    markdown_table,
    recover_and_clean,
)

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _write_small(target: Path, marker: str) -> None:
    with ReportWriter(target, title=f"report {marker}") as rep:
        sec = rep.section("Numbers")
        sec.text(f"marker {marker}\n\n- a list item with `code`")
        sec.table("t", pd.DataFrame({"a": [1.0, 2.5], "b": ["x", "y|z"]}), caption="a table")
        sec.pre("some preformatted\ntext")
        rep.save_file("data.txt", lambda p: p.write_text(marker))


def test_report_written_with_html_markdown_and_csv(tmp_path):
    target = tmp_path / "rep"
    _write_small(target, "one")
    files = _snapshot(target)
    assert set(files) == {"index.html", "report.md", "tables/t.csv", "data.txt"}
    md = files["report.md"].decode()
    assert "## Numbers" in md and "marker one" in md and "| a | b |" in md
    assert "y\\|z" in md  # pipe escaped in the Markdown table
    html = files["index.html"].decode()
    assert "<code>code</code>" in html and "<li>" in html and 'href="tables/t.csv"' in html
    assert pd.read_csv(target / "tables" / "t.csv").shape == (2, 2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_run_leaves_previous_report_untouched(tmp_path):
    target = tmp_path / "rep"
    _write_small(target, "one")
    before = _snapshot(target)
    with pytest.raises(ZeroDivisionError):
        with ReportWriter(target, title="two") as rep:
            rep.section("S").text("half written")
            rep.save_file("data.txt", lambda p: p.write_text("two"))
            raise ZeroDivisionError("simulated failure while writing")
    assert _snapshot(target) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # partial removed


def test_unwritable_file_fails_cleanly(tmp_path):
    """A real I/O failure inside the build (a file that cannot be created) aborts the run."""
    target = tmp_path / "rep"
    _write_small(target, "one")
    before = _snapshot(target)
    with pytest.raises(OSError):
        with ReportWriter(target, title="two") as rep:
            bad = rep.path("tables/x.csv")
            bad.mkdir()  # a directory where the CSV must go: writing it raises IsADirectoryError
            rep.section("S").table("x", pd.DataFrame({"a": [1]}))
    assert _snapshot(target) == before


def test_second_run_replaces_the_first(tmp_path):
    target = tmp_path / "rep"
    _write_small(target, "one")
    _write_small(target, "two")
    assert (target / "data.txt").read_text() == "two"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_killed_writer_leaves_previous_report_and_is_cleaned_up(tmp_path):
    """SIGKILL a process in the middle of building a report: the previous one is intact and the
    next run removes the partial folder."""
    target = tmp_path / "rep"
    _write_small(target, "one")
    before = _snapshot(target)
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from twolevel.workflows.report import ReportWriter
        with ReportWriter({str(target)!r}, title="two") as rep:
            rep.save_file("data.txt", lambda p: p.write_text("two"))
            print("building", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "building"
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".rep.partial-")]
        assert len(partial) == 1
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _snapshot(target) == before
    recover_and_clean(target)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    _write_small(target, "three")
    assert (target / "data.txt").read_text() == "three"


def test_crash_between_renames_is_recovered(tmp_path, monkeypatch):
    """Without an atomic exchange the old folder is renamed aside first; if the process dies
    before the new one is renamed in, the next run puts the old one back."""
    import twolevel.workflows.report as report

    target = tmp_path / "rep"
    _write_small(target, "one")
    before = _snapshot(target)
    new = tmp_path / "new"
    new.mkdir()
    (new / "data.txt").write_text("new")
    monkeypatch.setattr(report, "_renameat2_exchange", lambda a, b: False)
    real_replace = os.replace
    calls = []

    def dying_replace(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise KeyboardInterrupt  # dies between the two renames
        return real_replace(a, b)

    monkeypatch.setattr(report.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        atomic_replace_dir(new, target)
    monkeypatch.setattr(report.os, "replace", real_replace)
    assert not target.exists()
    # the aside copy carries this process's pid; a later process (another pid) recovers it
    aside = next(tmp_path.glob(".rep.old-*"))
    aside.rename(tmp_path / ".rep.old-999999999-x")
    recover_and_clean(target)
    assert _snapshot(target) == before


def test_markdown_table_formats_numbers():
    md = markdown_table(pd.DataFrame({"x": [1.23456789, np.nan], "n": [3, 4]}), digits=3)
    assert md.splitlines()[2] == "| 1.235 | 3 |"
    assert md.splitlines()[3] == "|  | 4 |"


# ----------------------------------------------------------------------------- figures


@pytest.fixture(scope="module")
def fake_schools():
    """742 simulated schools with OLS, BLUP-like and posterior-like estimates (no model fit)."""
    rng = np.random.default_rng(3)
    J = 742
    n = pd.Series(rng.integers(10, 26, J), index=pd.Index(np.arange(1000, 1000 + J), name="schid"))
    T = np.array([[55.0, -3.8], [-3.8, 4.7]])
    true = rng.multivariate_normal([95.0, 7.4], T, J)
    ols = pd.DataFrame(true + rng.normal(0, 1, (J, 2)) * [4.0, 6.0], index=n.index,
                       columns=["(Intercept)", "famsesc"])
    reml = 0.8 * ols + 0.2 * np.array([95.0, 7.4])
    reml["famsesc"] = 0.15 * ols["famsesc"] + 0.85 * 7.4
    bayes = reml + rng.normal(0, 0.1, (J, 2))
    return n, ols, reml, bayes, T


def _max_ticks(fig) -> int:
    """The largest number of labelled ticks on any one axis of the figure."""
    fig.canvas.draw()
    return max(
        len([t for t in labels if t.get_text()])
        for ax in fig.axes
        for labels in (ax.get_xticklabels(), ax.get_yticklabels())
    )


def test_caterpillar_legible_at_742_schools(tmp_path, fake_schools):
    n, ols, reml, bayes, T = fake_schools
    u = reml["(Intercept)"] - 95.0
    tab = caterpillar_table(n.index, u, np.full(len(u), 3.0), bayes["(Intercept)"] - 95.0,
                            u - 6.0, u + 6.0)
    assert tab["rank"].tolist() == list(range(1, 743))
    assert (np.diff(tab["reml"]) >= 0).all()
    fig = plots.caterpillar_figure(tab, "u0j", "u0j")
    assert _max_ticks(fig) <= 15  # ranks and values only, never one label per school
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert len(texts) == 1 and texts[0].count("\n") == 11  # 5 highest + 5 lowest named
    fig.savefig(tmp_path / "c.png")
    plt = plots.plt
    plt.close(fig)
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_shrinkage_table_summary_and_figures(tmp_path, fake_schools):
    n, ols, reml, bayes, T = fake_schools
    tab = shrinkage_table(n, ols, reml, bayes)
    assert np.allclose(tab["famsesc.shift_reml"], reml["famsesc"] - ols["famsesc"])
    s = shrinkage_summary(tab, {"(Intercept)": 55.0, "famsesc": 4.7},
                          {"(Intercept)": 56.0, "famsesc": 5.5})
    sp = s.spread
    assert np.isclose(sp.loc["famsesc", "var_ols"], ols["famsesc"].var())
    assert sp.loc["famsesc", "ratio_reml"] < sp.loc["(Intercept)", "ratio_reml"] < 1
    text = describe_shrinkage(s, {"famsesc": "SES slope"})
    assert "SES slope" in text and f"{sp.loc['famsesc', 'var_ols']:.3g}" in text
    ell = t_ellipse(np.array([95.0, 7.4]), T)
    # every ellipse point has Mahalanobis distance² = χ²₂(0.95) = 5.991
    d = ell - [95.0, 7.4]
    m = np.einsum("ij,jk,ik->i", d, np.linalg.inv(T), d)
    assert np.allclose(m, 5.991464547107979)
    for name, fig in {
        "s": plots.shrinkage_figure(tab, ("(Intercept)", "famsesc"), np.array([95.0, 7.4]), ell,
                                    ell * 1.01),
        "z": plots.shrinkage_by_size_figure(tab, ["(Intercept)", "famsesc"], {}),
    }.items():
        assert _max_ticks(fig) <= 15
        fig.savefig(tmp_path / f"{name}.png")
        plots.plt.close(fig)
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
