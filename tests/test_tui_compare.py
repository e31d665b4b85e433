"""The Compare screen driven by Pilot: navigation, panes, filters, marks persisted across restarts."""

from __future__ import annotations

import pytest
from compare_data import build_study
from pilot_helpers import wait_for

from core.analysis import compare as study
from core.analysis import marks
from core.store.workspace import Workspace

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def _wait_loaded(pilot, screen):
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    for _ in range(50):
        if screen.view is not None and screen.panes and screen.panes[0].pane is not None:
            return
        await pilot.pause(0.02)
    raise AssertionError("compare view never loaded")


def _app(ws, **args):
    from tui.app import MirageApp

    return MirageApp(ws.root, start="compare", start_args={"suite": "nq", **args})


@pytest.fixture
def study_ws(ws):
    build_study(ws, n_items=30)
    return ws


async def test_navigation_and_panes(study_ws):
    app = _app(study_ws)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        await _wait_loaded(pilot, screen)
        assert [p.pane.model for p in screen.panes] == ["base", "imitation", "teacher"]
        assert all(p.display for p in screen.panes)  # wide: side by side
        assert screen.row.idx == 0
        await pilot.press("j", "j")
        assert screen.row.idx == 2
        await pilot.press("k")
        assert screen.row.idx == 1
        await pilot.press("l")
        assert screen.active == 1 and screen.panes[1].has_class("-active")
        await pilot.press("l", "l")
        assert screen.active == 0
        await pilot.press("h")
        assert screen.active == 2
        await pilot.press("G")
        assert screen.row.idx == 29
        await pilot.press("j")  # stays on the last item
        assert screen.row.idx == 29


async def test_narrow_terminal_cycles_panes(study_ws):
    app = _app(study_ws)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await _wait_loaded(pilot, screen)
        assert [p.display for p in screen.panes] == [True, True, False]  # two of three fit
        await pilot.press("l")
        assert [p.display for p in screen.panes] == [True, True, False]  # the active one was shown
        await pilot.press("l")
        assert [p.display for p in screen.panes] == [False, True, True]
        assert screen.narrow


async def test_filters_and_disagreement(study_ws):
    ws = study_ws
    truth = {}
    view = study.CompareView(ws, "nq")
    for p in range(view.n):
        row = view.row(p)
        truth[row.idx] = {pane.model: pane.verdict for pane in row.panes}
    app = _app(ws)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        await _wait_loaded(pilot, screen)
        await pilot.press("v")  # first pattern: teacher right, imitation wrong
        assert screen.view.filters.pattern == "teacher-right-imitation-wrong"
        want = [i for i, v in truth.items() if v["teacher"] == 1 and v["imitation"] == 0]
        assert screen.row.total == len(want) and screen.row.idx == want[0]
        await pilot.press("j")
        assert screen.row.idx == want[1]
        await pilot.press("escape")
        assert screen.view.filters.pattern is None and screen.row.total == 30
        await pilot.press("t")
        assert screen.view.filters.task == "geography" and screen.row.total == 10
        await pilot.press("escape", "slash")
        await pilot.press(*"question 2", "enter")
        assert screen.view.filters.text == "question 2"
        assert [screen.view.row(p).idx for p in range(screen.row.total)] == [2, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29]
        await pilot.press("escape")
        disagree = [i for i, v in truth.items() if len(set(v.values())) > 1]
        await pilot.press("n")
        assert screen.row.idx == next(i for i in disagree if i > 0)
        await pilot.press("slash", *"zzz nothing", "enter")
        assert screen.query_one("#compare-empty").display
        assert "No items match" in str(screen.query_one("#compare-empty").render())


async def test_marks_persist_across_app_restarts(study_ws):
    ws = study_ws
    app = _app(ws)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        await _wait_loaded(pilot, screen)
        await pilot.press("j", "l", "x")  # item 1, imitation: incorrect
        await pilot.press("j", "y")  # item 2, imitation: correct
        await pilot.press("y")  # same key again clears it
        await pilot.press("u")  # unsure instead
        await app.workers.wait_for_complete()
        assert screen.panes[1].pane.mark == "unsure"
    app2 = _app(ws)
    async with app2.run_test(size=(160, 40)) as pilot:
        screen = app2.screen
        await _wait_loaded(pilot, screen)
        await pilot.press("j")
        assert [p.pane.mark for p in screen.panes] == [None, "incorrect", None]
        await pilot.press("j")
        assert [p.pane.mark for p in screen.panes] == [None, "unsure", None]
    ws2 = Workspace.open(ws.root)
    assert sorted(m["mark"] for m in marks.marks(ws2, "nq")) == ["incorrect", "unsure"]
    ws2.close()


async def test_s_moves_to_the_next_suite_with_outputs(ws):
    """Opened without a suite (key 5 after the demo) the screen shows the suite scored most recently,
    not the first by name (`code` after the demo); `s` steps through the others, wrapping around,
    each with its own models."""
    from tui.app import MirageApp

    build_study(ws, n_items=6, suite="nq")
    build_study(ws, n_items=4, suite="code")
    build_study(ws, n_items=5, suite="style")
    # Rescoring nq makes it the latest scores (ids grow with every insert).
    ws.db.conn.execute(
        "insert into scores (generation_id, metric, version, inputs_hash, value, created_at)"
        " select g.id, 'again', '1', 'h', 1.0, '' from generations g join items i on i.id = g.item_id"
        " join suites s on s.id = i.suite_id where s.name = 'nq' limit 1"
    )
    ws.db.conn.commit()
    app = MirageApp(ws.root, start="compare", start_args={"models": ["base", "teacher"]})
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        await _wait_loaded(pilot, screen)
        assert screen.view.suite == "nq" and len(screen.panes) == 2
        await pilot.press("s")
        await _wait_loaded(pilot, screen)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert screen.view.suite == "style" and len(screen.view.order) == 5
        assert [p.pane.model for p in screen.panes] == ["base", "imitation", "teacher"]
        assert "style" in str(screen.query_one("#compare-status").render())
        await pilot.press("s")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert screen.view.suite == "code"


def test_default_suite_is_the_latest_coverage_runs_then_the_latest_scores(ws):
    build_study(ws, n_items=3, suite="code")
    build_study(ws, n_items=3, suite="qa")
    build_study(ws, n_items=3, suite="style")
    have = study.suites_with_outputs(ws)
    assert have == ["code", "qa", "style"]
    assert study.default_suite(ws, have) == "style"  # scored last
    qa_id = ws.db.execute("select id from suites where name = 'qa'").fetchone()[0]
    did = ws.db.execute(
        "insert into datasets (name, kind, format, source, meta, created_at) values ('d','imitation','messages','x','{}','')"
    ).lastrowid
    ws.db.execute(
        "insert into coverage_runs (key, dataset_id, suite_id, data, suite, model_key, model_name, mode, threshold,"
        " k, n_clusters, seed, data_hash, suite_hash, summary, clusters, created_at)"
        " values ('k', ?, ?, 'd', 'qa', 'm', 'm', 'user', 0.5, 1, 1, 0, 'h', 'h', '{}', '[]', '')",
        [did, qa_id],
    )
    ws.db.conn.commit()
    # The demo measures coverage on qa: where gap closed has its support and the README points.
    assert study.default_suite(ws, have) == "qa"
    from core.analysis import views

    assert views.analysis(ws)["suite"] == "qa"  # the Analysis screen (`6`) opens on it too
    assert study.default_suite(ws, ["code", "style"]) == "style"  # a covered suite without outputs is skipped


async def test_empty_state_says_what_to_run(ws):
    from tui.app import MirageApp

    app = MirageApp(ws.root, start="compare", start_args={})
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        text = str(app.screen.query_one("#compare-empty").render())
        assert "mirage import suite" in text


async def test_blind_rating_mode(study_ws):
    ws = study_ws
    app = _app(ws)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        await _wait_loaded(pilot, screen)
        await pilot.press("r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        rating = app.screen
        assert rating.id == "rating" and len(rating.queue) == 30
        first = rating.queue[0]
        await pilot.press("a", "t", "s")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert rating.result["n"] == 2 and rating.result["ties"] == 1
        assert rating.result["wins"] == (0 if first.a_is_teacher else 1)
        await pilot.press("escape")
        assert app.screen is screen


async def test_analysis_screen_views_and_export(study_ws):
    from tui.app import MirageApp

    app = MirageApp(study_ws.root, start="analysis", start_args={"suite": "nq"})
    async with app.run_test(size=(160, 45)) as pilot:
        screen = app.screen
        for _ in range(100):
            await app.workers.wait_for_complete()
            await pilot.pause()
            if screen.report is not None:
                break
        assert screen.report["suite"] == "nq"
        table1 = screen.query_one("#tables-table1").render()
        assert screen._current_view() == "table1"
        await pilot.press("l")
        assert screen._current_view() == "table2"
        await pilot.press("e")
        await app.workers.wait_for_complete()
        path = study_ws.root / "artifacts" / "exports" / "nq-table2.md"
        text = path.read_text()
        assert "| imitation | 90.0 [90.0, 90.0] (n=30) |" in text
        await pilot.press("l", "l", "l", "E")
        await app.workers.wait_for_complete()
        assert (study_ws.root / "artifacts" / "exports" / "nq-human.json").exists()
        assert table1 is not None


async def test_analysis_empty_state_says_what_to_run(ws):
    from tui.app import MirageApp

    app = MirageApp(ws.root, start="analysis")
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "mirage score" in str(app.screen.query_one("#analysis-empty").render())


def test_gap_plot_says_what_is_missing():
    """After the demo the gap plot asked for scores and `mirage coverage`, both done: every task's
    gap closed was n/a (teacher below base). It now names the one thing that is missing."""
    from tui.screens.analysis import gap_plot_note

    def row(task, value, support):
        return {"imitation_model": "imit", "task": task, "value": value, "support": support}

    assert "scored" in gap_plot_note([row("all", None, None)])
    assert "mirage coverage" in gap_plot_note([row("all", 0.2, None), row("geo", 0.3, None)])
    note = gap_plot_note([row("all", None, None), row("geo", None, 0.75), row("lit", None, 0.0)])
    assert "n/a on every task" in note and "mirage coverage" not in note


def test_analysis_tables_fit_80_columns():
    """At 80×24 model names folded mid-word and the gap table's n/a reason took ~8 lines a row;
    names stay whole and the reason is a short cell explained once in the caption."""
    from rich.console import Console

    from core.analysis import report
    from tui.screens.analysis import _table

    g = {
        "imitation_model": "imitation-geography",
        "task": "units_arithmetic",
        "metric": "exact_match",
        "base": 0.806,
        "imitation": 0.556,
        "teacher": 0.528,
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "teacher_below_base": True,
        "imitation_minus_base": -0.25,
        "reason": "teacher below base: imitation moved toward a weaker teacher",
        "support": 0.75,
        "n": 36,
    }
    head, rows = report._gap_rows({"gap_closed": [g, {**g, "imitation_model": "gemma3-270m"}]})
    console = Console(width=78, record=True)
    console.print(_table("Gap closed", "n/a, Δ: the teacher is below the base", head, rows))
    lines = console.export_text().splitlines()
    body = lines[lines.index(next(x for x in lines if "imitation-geography" in x)) :]
    assert any("imitation-geography" in x for x in lines) and any("gemma3-270m" in x for x in lines)
    second = next(i for i, x in enumerate(body) if "gemma3-270m" in x)
    assert second <= 3, "a gap row takes at most 3 lines at 78 columns"
    assert max(len(x) for x in lines) <= 78


def _four_model_study(ws):
    """The demo's four models with their long names: base, two imitation models, teacher."""
    from compare_data import set_roles

    build_study(ws, n_items=30, models=("gemma3-270m", "imitation-broad", "imitation-geography", "teacher"))
    set_roles(
        ws,
        '[roles]\nteacher = "teacher"\nbase = "gemma3-270m"\nimitation = ["imitation-broad", "imitation-geography"]\n',
    )
    return ws


@pytest.mark.parametrize(
    ("size", "models", "cut"),
    [((80, 24), 4, True), ((120, 40), 4, True), ((160, 40), 3, False)],
)
async def test_analysis_status_line_ends_in_ellipsis_or_whole(ws, size, models, cut):
    """At 120 columns the status line (four models' names) wrapped at a word and height 1 cut it
    after "imitation-broad," with nothing to say more followed. It is one line ending in "…" when
    too long, and whole, down to its last model, when it fits."""
    from tui.app import MirageApp

    if models == 4:
        _four_model_study(ws)
    else:
        build_study(ws, n_items=30)
    app = MirageApp(ws.root, start="analysis", start_args={"suite": "nq"})
    async with app.run_test(size=size) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.report is not None)
        await pilot.pause()
        rep = screen.report
        full = (
            f"nq (qa) · s next suite · e/E export · teacher teacher · base {rep['base']}"
            f" · imitation {', '.join(rep['imitation'])} · models {', '.join(rep['models'])}"
        )
        status = screen.query_one("#analysis-status")
        visible = status.render_line(0).text.strip()
        assert status.size.height == 1
        if cut:
            assert len(full) > status.size.width
            assert visible.endswith("…"), visible
            assert full.startswith(visible[:-1].rstrip())
            assert len(visible) >= status.size.width - 4  # cut at the edge, not at an earlier word
        else:
            assert visible == full
            assert visible.endswith("models base, imitation, teacher")


def _shown(screen):
    return [p.pane.model for p in screen.panes if p.display]


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        ((80, 24), ["gemma3-270m", "imitation-broad"]),
        ((120, 40), ["gemma3-270m", "imitation-broad", "imitation-geography"]),
        ((160, 40), ["gemma3-270m", "imitation-broad", "imitation-geography", "teacher"]),
    ],
)
async def test_four_models_side_by_side_as_width_allows(ws, size, shown):
    """Four models (the demo's base, two imitation models, teacher) showed one pane below 152
    columns: all or one. As many as fit at MIN_PANE_WIDTH show, and l / h (tab) scroll the
    window so every model comes into view beside its neighbour."""
    from tui.screens.compare import MIN_PANE_WIDTH

    _four_model_study(ws)
    app = _app(ws)
    async with app.run_test(size=size) as pilot:
        screen = app.screen
        await _wait_loaded(pilot, screen)
        assert _shown(screen) == shown
        await pilot.pause()
        widths = [p.size.width for p in screen.panes if p.display]
        assert min(widths) >= MIN_PANE_WIDTH - 2  # inside the border
        strip = screen.query_one("#compare-strip").render_line(0).text.rstrip()
        models = ["gemma3-270m", "imitation-broad", "imitation-geography", "teacher"]
        for _ in range(4):  # round the four models: the active pane is always one shown
            await pilot.press("l")
            assert screen.panes[screen.active].display and len(_shown(screen)) == len(shown)
        assert screen.active == 0 and _shown(screen) == shown
        await pilot.press("h")  # wraps to the teacher, with its neighbours beside it
        assert _shown(screen) == models[4 - len(shown) :]
        if len(shown) < 4:  # some hidden: the strip says how to reach them and names every model
            assert strip.lstrip().startswith("h/l")
            assert all(m in strip for m in models) and not strip.endswith("…")
        else:
            assert not screen.narrow and "h/l" not in strip


def test_pane_window_follows_the_active_pane():
    from tui.screens.compare import pane_window

    assert pane_window(4, 0, 0, 160) == (0, 4)
    assert pane_window(4, 0, 0, 120) == (0, 3)
    assert pane_window(4, 3, 0, 120) == (1, 3)  # moved just enough
    assert pane_window(4, 1, 1, 120) == (1, 3)  # still inside: unchanged
    assert pane_window(4, 0, 1, 120) == (0, 3)
    assert pane_window(4, 2, 0, 30) == (2, 1)  # narrower than one pane: still one
    assert pane_window(3, 2, 2, 200) == (0, 3)  # widened: back to all
