"""The page in headless Chromium (Playwright), served for real over a SqliteStore.

Each test opens a fresh page, fails on any console error (a CSP violation
shows up there) or JavaScript dialog, and leaves a screenshot in
tests/web/artifacts/.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from symbolizer import pprof
from symbolizer.profile import Profile
from symbolizer.proto import profile_pb2
from tests.web import profiles
from tests.web.conftest import TOKEN, AppFactory, Clock, LiveServer
from tests.web.profiles import EVIL, HOT, SAMPLES_PER_WINDOW, T0, WINDOW, WINDOWS, ms

pytestmark = pytest.mark.browser

ALL = f"from={ms(T0)}&to={ms(T0 + WINDOWS * WINDOW)}"
HIGHLIGHT = "#e600e6"
TIMEOUT_MS = 10_000


class Page:
    """A Playwright page plus what it must not do."""

    def __init__(self, page: Any, server: LiveServer) -> None:
        self.page = page
        self.server = server
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("dialog", self._dialog)

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, query: str = ALL, state: str = "flame", value: str = "ready") -> None:
        self.page.goto(f"{self.server.url}/?{query}")
        self.wait_state(state, value)

    def wait_state(self, view: str, value: str) -> None:
        self.page.wait_for_selector(f"body[data-{view}-state={value}]")

    def frame(self, name: str, chart: str = "#flame") -> Any:
        return self.page.locator(f'{chart} g.frame[name="{css_string(name)}"]')

    def fill_of(self, name: str, chart: str = "#flame") -> str:
        return str(self.frame(name, chart).locator("rect").first.get_attribute("fill"))

    def shot(self, artifacts: Path, name: str) -> None:
        self.page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def css_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def rgb(color: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"rgb\((\d+),\s*(\d+),\s*(\d+)\)", color)
    assert m, color
    r, g, b = (int(x) for x in m.groups())
    return r, g, b


@pytest.fixture
def ui(browser: Any, live_server: LiveServer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = Page(context.new_page(), live_server)
    yield page
    context.close()
    assert page.dialogs == [], f"a dialog opened: {page.dialogs}"
    assert page.errors == [], page.errors


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    pw_expect.set_options(timeout=TIMEOUT_MS)  # slow CI machines
    return pw_expect(locator)


def test_flamegraph_shows_the_hot_function(ui: Page, artifacts: Path) -> None:
    ui.open()
    hot = ui.frame(HOT)
    expect(hot).to_have_count(1)
    expect(hot.locator(".d3-flame-graph-label")).to_have_text(HOT)
    width = float(hot.locator("rect").get_attribute("width") or 0)
    chart = float(ui.frame("all").locator("rect").get_attribute("width") or 1)
    assert width / chart == pytest.approx(200 / SAMPLES_PER_WINDOW, rel=0.01)
    expect(ui.page.locator("#flame-info")).to_contain_text(
        f"{WINDOWS * SAMPLES_PER_WINDOW:,} samples"
    )
    ui.shot(artifacts, "flamegraph")


def test_tooltip_shows_samples_and_percentages(ui: Page) -> None:
    ui.open()
    ui.frame(HOT).hover()
    tip = ui.page.locator("#tooltip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text(HOT)
    expect(tip).to_contain_text(f"total: {WINDOWS * 200:,} samples (55.6%)")
    expect(tip).to_contain_text("self: 1,200 samples (55.6%)")


def test_search_highlights_and_shows_matched_percent(ui: Page, artifacts: Path) -> None:
    ui.open()
    ui.page.fill("#search", "HOT_sp")
    expect(ui.page.locator("#matched")).to_have_text(
        f"matched: 55.6% ({WINDOWS * 200:,} of {WINDOWS * SAMPLES_PER_WINDOW:,} samples)"
    )
    assert ui.fill_of(HOT) == HIGHLIGHT
    assert ui.fill_of("run") != HIGHLIGHT
    assert "q=HOT_sp" in ui.page.url
    ui.shot(artifacts, "search")
    # Special characters are plain text, not a regular expression.
    ui.page.fill("#search", "(1)>")
    expect(ui.page.locator("#matched")).to_contain_text("matched: 8.33%")
    assert ui.fill_of(EVIL) == HIGHLIGHT


def test_click_zooms_and_breadcrumbs_follow(ui: Page, artifacts: Path) -> None:
    ui.open()
    crumbs = ui.page.locator("#breadcrumbs button")
    expect(crumbs).to_have_text(["all"])
    ui.frame("work").click()
    expect(crumbs).to_have_text(["all", "main", "work"])
    # Zoomed: work fills the width, its siblings are gone.
    all_width = float(ui.page.locator("#flame svg").get_attribute("width") or 0)
    ui.page.wait_for_function(
        "w => Math.abs(+document.querySelector('#flame g.frame[name=\"work\"] rect')"
        ".getAttribute('width') - w) < 1",
        arg=all_width,
    )
    expect(ui.frame(HOT)).to_have_count(0)
    expect(ui.page.locator("#selected")).to_have_text("selected: work")
    ui.shot(artifacts, "zoom")
    crumbs.nth(1).click()
    expect(crumbs).to_have_text(["all", "main"])
    expect(ui.frame(HOT)).to_have_count(1)
    ui.page.click("#reset-zoom")
    expect(crumbs).to_have_text(["all"])


def test_filter_by_pid_changes_the_graph(ui: Page, artifacts: Path) -> None:
    ui.open()
    expect(ui.frame(HOT)).to_have_count(1)
    ui.page.fill("#f-pid", "200")
    ui.page.press("#f-pid", "Enter")
    expect(ui.frame(HOT)).to_have_count(0)
    expect(ui.frame(EVIL)).to_have_count(1)
    expect(ui.frame("vfs_read")).to_have_count(1)
    expect(ui.page.locator("#flame-info")).to_contain_text(f"{WINDOWS * 40:,} samples")
    assert "pid=200" in ui.page.url
    ui.shot(artifacts, "filter-pid")
    # Frame kinds: hide the kernel.
    ui.page.uncheck('input[name="kind"][value="kernel"]')
    expect(ui.frame("vfs_read")).to_have_count(0)
    expect(ui.frame("read")).to_have_count(1)


def test_icicle_toggle(ui: Page) -> None:
    ui.open()

    def root_y() -> float:
        transform = ui.frame("all").get_attribute("transform") or ""
        return float(re.findall(r"[-\d.]+", transform)[1])

    assert root_y() > 50  # flame: the root at the bottom
    ui.page.check("#icicle")
    ui.page.wait_for_function(
        "() => /,\\s*0\\)/.test(document.querySelector('#flame g.frame[name=\"all\"]')"
        ".getAttribute('transform'))"
    )
    assert root_y() == 0


def test_diff_colors_growth_red_and_shrinkage_blue(ui: Page, artifacts: Path) -> None:
    half = T0 + 3 * WINDOW
    ui.open(
        f"tab=diff&diff=range&from={ms(half)}&to={ms(T0 + 6 * WINDOW)}"
        f"&base_from={ms(T0)}&base_to={ms(half)}",
        state="diff",
    )
    r, _, b = rgb(ui.fill_of("grow_me", "#diff-flame"))
    assert r > b + 100, (r, b)
    r, _, b = rgb(ui.fill_of("shrink_me", "#diff-flame"))
    assert b > r + 100, (r, b)
    r, _, b = rgb(ui.fill_of(HOT, "#diff-flame"))
    assert abs(r - b) < 10  # same share before and after
    ui.frame("grow_me", "#diff-flame").hover()
    expect(ui.page.locator("#tooltip")).to_contain_text("change: +")
    ui.shot(artifacts, "diff-ranges")


def test_diff_of_two_processes_from_the_form(ui: Page) -> None:
    # The default baseline, the minute before, holds nothing.
    ui.open(f"{ALL}&pid=200&tab=diff", state="diff", value="empty")
    expect(ui.page.locator("#diff-info")).to_contain_text("Baseline: No samples")
    ui.page.check('input[name="diff-mode"][value="pid"]')
    ui.page.fill("#base-pid", "100")
    ui.page.click("#diff-form button[type=submit]")
    expect(ui.page.locator("#diff-info")).to_contain_text("pid 100")
    r, _, b = rgb(ui.fill_of(EVIL, "#diff-flame"))
    assert r > b
    r, _, b = rgb(ui.fill_of("run", "#diff-flame"))
    assert b > r


def test_top_table_sorts_and_opens_the_sandwich(ui: Page, artifacts: Path) -> None:
    ui.open()
    ui.page.click("#tab-btn-top")
    ui.wait_state("top", "ready")
    first = ui.page.locator("#top-table tbody tr").first.locator("td")
    expect(first.first).to_have_text(HOT)
    ui.page.click('#top-table th button[data-sort="total"]')
    expect(first.first).to_have_text("main")
    expect(first.nth(5)).to_have_text("100.0%")
    ui.shot(artifacts, "top")
    ui.page.locator("#top-table td.name", has_text="work").click()
    ui.wait_state("sandwich", "ready")
    expect(ui.page.locator("#sandwich-title")).to_contain_text("work — total 600 samples")
    expect(ui.frame("main", "#sandwich-callers")).to_have_count(1)
    expect(ui.frame("grow_me", "#sandwich-callees")).to_have_count(1)
    ui.shot(artifacts, "sandwich")


def test_pprof_download_decodes(ui: Page) -> None:
    ui.open(f"{ALL}&pid=100")
    with ui.page.expect_download() as info:
        ui.page.click("#dl-pprof")
    data = Path(info.value.path()).read_bytes()
    msg = profile_pb2.Profile.FromString(gzip.decompress(data))
    assert HOT in {msg.string_table[f.name] for f in msg.function}
    profile = pprof.decode(data)
    assert profile.total_samples == WINDOWS * 305
    with ui.page.expect_download() as info:
        ui.page.click("#dl-folded")
    text = Path(info.value.path()).read_text()
    assert f"main;run;{HOT} {WINDOWS * 200}" in text


def test_function_names_are_text_never_markup(ui: Page, artifacts: Path) -> None:
    """A function named like an HTML element shows as text and runs nothing."""
    ui.open()
    evil = ui.frame(EVIL)
    expect(evil).to_have_count(1)
    expect(evil.locator(".d3-flame-graph-label")).to_have_text(EVIL)
    evil.hover()
    expect(ui.page.locator("#tooltip .tip-name")).to_have_text(EVIL)
    evil.click()
    expect(ui.page.locator("#breadcrumbs button").last).to_have_text(EVIL)
    expect(ui.page.locator("#selected")).to_have_text(f"selected: {EVIL}")
    ui.shot(artifacts, "escaping-flame")
    ui.page.click("#tab-btn-top")
    ui.wait_state("top", "ready")
    expect(ui.page.locator("#top-table td.name", has_text=EVIL)).to_have_text(EVIL)
    ui.page.locator("#top-table td.name", has_text=EVIL).click()
    ui.wait_state("sandwich", "ready")
    expect(ui.page.locator("#sandwich-title")).to_contain_text(EVIL)
    ui.shot(artifacts, "escaping-sandwich")
    ui.page.click("#tab-btn-top")
    ui.page.fill("#top-search", "onerror")
    expect(ui.page.locator("#top-table td.name")).to_have_text([EVIL])
    ui.page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert ui.page.locator("img").count() == 0
    assert ui.page.evaluate("document.querySelectorAll('[onerror]').length") == 0
    assert ui.dialogs == []


def test_timeline_brush_selects_a_range(ui: Page) -> None:
    ui.open()
    box = ui.page.locator("#timeline svg").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    ui.page.mouse.move(box["x"] + box["width"] * 0.3, y)
    ui.page.mouse.down()
    ui.page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
    ui.page.mouse.up()
    ui.page.wait_for_function(f"() => document.querySelector('#from').value !== '{ms(T0)}'")
    expect(ui.page.locator("#preset")).to_have_value("custom")
    frm = int(ui.page.input_value("#from"))
    to = int(ui.page.input_value("#to"))
    assert ms(T0) < frm < to < ms(T0 + WINDOWS * WINDOW)
    ui.wait_state("flame", "ready")


def test_empty_range_says_so(ui: Page) -> None:
    ui.open(f"from={ms(T0) - 3_600_000}&to={ms(T0) - 60_000}", value="empty")
    expect(ui.page.locator("#flame-info")).to_contain_text("No samples from")
    expect(ui.page.locator("#flame-info")).to_contain_text("The store holds data from")
    expect(ui.page.locator("#banner")).to_contain_text("No samples from")


def test_bad_parameter_shows_a_banner(ui: Page) -> None:
    ui.page.goto(f"{ui.server.url}/?from=yesterday")
    banner = ui.page.locator("#banner")
    expect(banner).to_contain_text("bad parameter from")
    # The failed request is an expected console error of the browser itself.
    ui.errors = [e for e in ui.errors if "status of 400" not in e]


def test_agent_page(ui: Page, artifacts: Path) -> None:
    ui.page.goto(f"{ui.server.url}/agent")
    ui.wait_state("agent", "ready")
    expect(ui.page.locator("#agent-store")).to_contain_text(f"{WINDOWS * SAMPLES_PER_WINDOW:,}")
    expect(ui.page.locator("#agent-sampling")).to_contain_text("38.2")
    expect(ui.page.locator("#agent-lost")).to_contain_text("ring_buffer_full")
    expect(ui.page.locator("#agent-exporters")).to_contain_text("pyroscope")
    expect(ui.page.locator("#agent-other")).to_contain_text("<b>bold?</b>")
    assert ui.page.locator("#agent-other b").count() == 0
    ui.shot(artifacts, "agent")


# -- a server of its own: login, live mode --------------------------------------


def test_login_in_the_browser(browser: Any, make_app: AppFactory) -> None:
    server = LiveServer(make_app(token=TOKEN))
    try:
        context = browser.new_context()
        ui = Page(context.new_page(), server)
        ui.page.goto(f"{server.url}/?{ALL}")
        assert "/login" in ui.page.url
        ui.page.fill('input[name="token"]', "wrong")
        ui.page.click("button[type=submit]")
        expect(ui.page.locator(".login .banner")).to_have_text("Wrong token.")
        ui.page.fill('input[name="token"]', TOKEN)
        ui.page.click("button[type=submit]")
        ui.wait_state("flame", "ready")
        expect(ui.frame(HOT)).to_have_count(1)
        ui.page.click(".logout button")
        ui.page.wait_for_url(re.compile(r".*/login$"))
        context.close()
        # The wrong-token page is a 401 the browser logs as an error.
        assert all("401" in e for e in ui.errors), ui.errors
    finally:
        server.stop()


def test_live_mode_follows_new_windows(browser: Any, tmp_path: Path, artifacts: Path) -> None:
    from web import create_app

    store = profiles.fill_store(tmp_path / "kiln.db")
    clock = Clock(T0 + WINDOWS * WINDOW + 5 * 10**9)
    server = LiveServer(create_app(store, token=None, agent_status=None, clock_ns=clock))
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        ui = Page(context.new_page(), server)
        ui.open("preset=5m&live=1")
        expect(ui.page.locator("#live")).to_be_checked()
        expect(ui.frame("late_arrival")).to_have_count(0)
        late = Profile(period_ns=profiles.PERIOD)
        late.add(profiles.frames("late_arrival", "main"), 500, profiles.BURNER)
        start = T0 + WINDOWS * WINDOW
        store.write_window(late, start_ns=start, duration_ns=WINDOW)
        clock.ns = start + WINDOW + 10**9
        expect(ui.frame("late_arrival")).to_have_count(1, timeout=15_000)
        ui.shot(artifacts, "live")
        context.close()
        assert ui.errors == [] and ui.dialogs == []
    finally:
        server.stop()
        store.close()
