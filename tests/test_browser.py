"""A saved mask report in a real browser: Debian's headless Chromium.

Each report is fitted on a real generated run, saved with ``save_as_html`` and
opened as ``file://`` in Chromium, driven over the DevTools pipe
(``tests/_browser.py``). The page must request nothing but its own file and
``data:`` URIs, render the figure (a full-page screenshot that is not blank, with
the mask's green outline inside the figure) and show the coverage sentence.
Chromium is installed by ``.ci/install-browser.sh``; without it these tests fail.
"""

from __future__ import annotations

import io
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import _browser
import numpy as np
import pytest
from _browser import BrowserError, Chromium, require_chromium
from PIL import Image

import daskmask as dm

#: Pixels whose colour is close to matplotlib's "g" (0, 128, 0), the outline's colour.
GREEN_MIN, GREEN_MAX, OTHER_MAX = 90, 200, 70

#: Largest share of near-white pixels for a page that is not blank.
MAX_WHITE_SHARE = 0.97


def decode_png(png: bytes) -> np.ndarray:
    """Return a screenshot as an (height, width, 3) uint8 array."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG"
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def green_pixels(pixels: np.ndarray) -> np.ndarray:
    """Boolean map of the pixels of the outline's green."""
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return (g >= GREEN_MIN) & (g <= GREEN_MAX) & (r <= OTHER_MAX) & (b <= OTHER_MAX)


def figure_box(browser: Chromium) -> dict[str, float]:
    """Page box (CSS px) of the report's largest embedded image: the figure."""
    box = browser.evaluate(
        """(() => {
            const images = [...document.images].filter(i => i.src.startsWith('data:'));
            if (!images.length) return null;
            const areas = images.map(i => i.getBoundingClientRect())
                .map(r => ({x: r.left + window.scrollX, y: r.top + window.scrollY,
                            width: r.width, height: r.height}));
            areas.sort((a, b) => b.width * b.height - a.width * a.height);
            return areas[0];
        })()"""
    )
    assert box is not None, "the report embeds no figure (no data: image)"
    assert box["width"] > 200 and box["height"] > 60, box
    return box


def assert_offline(browser: Chromium, page: Path) -> None:
    """Every request of the page was its own file or a data: URI; no http, https or ws."""
    urls = browser.requested_urls()
    assert urls, "no request was recorded: the recorder does not work"
    assert urls[0] == page.as_uri(), urls[0]
    network = [u for u in urls if urlsplit(u).scheme not in ("file", "data")]
    assert not network, f"the report made network requests: {network}"
    assert [u for u in urls if u.startswith("file:")] == [page.as_uri()], urls


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    try:
        require_chromium()
    except BrowserError as error:
        pytest.fail(str(error), pytrace=False)
    with Chromium(width=1280, height=900) as chromium:
        yield chromium


def test_chromium_is_installed() -> None:
    # Fails (never skips) on a machine without Chromium, naming the install script.
    try:
        executable = require_chromium()
    except BrowserError as error:
        pytest.fail(str(error), pytrace=False)
    assert executable.is_file()


def test_missing_chromium_names_the_install_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_browser, "CHROMIUM", tmp_path / "chromium")
    with pytest.raises(BrowserError, match=r"bash \.ci/install-browser\.sh"):
        require_chromium()
    with pytest.raises(BrowserError, match="not found"):
        Chromium()


@pytest.fixture(scope="module")
def run_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated raw EPI run (with its skull), 48x48x28 voxels x 6 volumes."""
    folder = tmp_path_factory.mktemp("browser")
    return dm.datasets.generate_epi(
        folder / "run.nii.gz", shape=(48, 48, 28), n_timepoints=6, seed=7
    )


def test_chromium_records_network_requests(browser: Chromium, tmp_path: Path) -> None:
    # The recorder sees a request to the network, so the offline check below can fail.
    page = tmp_path / "remote.html"
    page.write_text(
        '<html><body><p>remote</p><img src="http://127.0.0.1:9/outline.png"></body></html>'
    )
    start = len(browser.events)
    browser.open(page.as_uri())
    urls = browser.requested_urls()
    assert "http://127.0.0.1:9/outline.png" in urls
    assert any(e["method"] == "Network.requestWillBeSent" for e in browser.events[start:])
    with pytest.raises(AssertionError, match="network requests"):
        assert_offline(browser, page)
    browser.events.clear()


def test_saved_report_renders_offline_with_green_outline(
    browser: Chromium, run_path: Path, tmp_path: Path
) -> None:
    masker = dm.NiftiMasker(mask_strategy="epi").fit(run_path)
    report = masker.generate_report()
    page = tmp_path / "report.html"
    report.save_as_html(page)
    assert page.stat().st_size > 10_000

    browser.events.clear()
    browser.open(page.as_uri())
    assert_offline(browser, page)

    text = browser.evaluate("document.body.innerText")
    coverage = 100 * masker.n_elements_ / np.prod(masker.mask_img_.shape)
    sentence = f"The mask includes {masker.n_elements_} voxels ({coverage:.1f} %) of the image."
    assert sentence in text
    assert "NiftiMasker" in browser.evaluate("document.title")
    assert browser.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)"), (
        "an embedded image failed to decode"
    )

    png = browser.screenshot(full_page=True)
    (tmp_path / "report.png").write_bytes(png)  # kept with the test's files for inspection
    pixels = decode_png(png)
    height, width, _ = pixels.shape
    assert width >= 1000 and height >= 600, pixels.shape
    white = (pixels.min(axis=2) >= 245).mean()
    assert white < MAX_WHITE_SHARE, f"the page is blank: {white:.1%} white"
    colours = np.unique(pixels.reshape(-1, 3), axis=0).shape[0]
    assert colours > 200, f"only {colours} distinct colours: the figure did not render"

    box = figure_box(browser)
    top, left = int(box["y"]), int(box["x"])
    figure = pixels[top : top + int(box["height"]), left : left + int(box["width"])]
    inside = int(green_pixels(figure).sum())
    outside = int(green_pixels(pixels).sum()) - inside
    assert inside > 300, f"only {inside} green outline pixels in the figure"
    assert outside < inside / 10, (inside, outside)
    # The figure shows the brain: many grey levels inside its box.
    grey = figure[(np.ptp(figure.astype(int), axis=2) < 8)]
    assert np.unique(grey[:, 0]).size > 100


def test_resampled_report_switches_on_hover(
    browser: Chromium, run_path: Path, tmp_path: Path
) -> None:
    masker = dm.NiftiMasker(mask_strategy="epi", target_affine=np.eye(3) * 8).fit(run_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fitted masker with an image: no warning
        report = masker.generate_report(title="Resampled mask")
    page = tmp_path / "resampled.html"
    report.save_as_html(page)

    browser.events.clear()
    browser.open(page.as_uri())
    assert_offline(browser, page)
    text = browser.evaluate("document.body.innerText")
    assert "Resampled mask" in text
    assert re.search(r"The mask includes \d+ voxels \(\d+\.\d %\) of the image\.", text)
    assert re.search(r"hover", text, re.IGNORECASE), "no caption explains the hover switch"

    box = figure_box(browser)
    browser.hover(10, 10)  # away from the figure
    time.sleep(0.8)
    before = decode_png(browser.screenshot(full_page=False))
    browser.hover(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    time.sleep(0.8)  # past the CSS transition
    after = decode_png(browser.screenshot(full_page=False))
    browser.hover(10, 10)

    top, left = int(box["y"]), int(box["x"])
    window = np.s_[top : top + int(box["height"]), left : left + int(box["width"])]
    changed = np.abs(before[window].astype(int) - after[window].astype(int)).max(axis=2) > 30
    assert changed.mean() > 0.02, "hovering the figure does not switch to the resampled view"
    assert green_pixels(after[window]).sum() > 100, "no outline in the resampled view"
    # Outside the figure nothing moves.
    outside = np.ones(before.shape[:2], dtype=bool)
    outside[window] = False
    assert (before[outside] == after[outside]).all()


def _summary_box(browser: Chromium, text: str) -> dict[str, float]:
    """Viewport box of the <summary> whose text is ``text``, scrolled into view."""
    return browser.evaluate(
        f"""(() => {{
            const s = [...document.querySelectorAll('summary')]
                .find(e => e.textContent.trim() === {text!r});
            s.scrollIntoView({{block: 'center'}});
            const r = s.getBoundingClientRect();
            return {{x: r.left + 10, y: r.top + r.height / 2}};
        }})()"""
    )


@pytest.mark.parametrize(
    ("kind", "width", "least_share"),
    [("single", 1600, 0.75), ("single", 600, 0.9), ("multi", 1600, 0.75)],
)
def test_report_figure_fills_the_window_wide_and_narrow(
    browser: Chromium, run_path: Path, tmp_path: Path, kind: str, width: int, least_share: float
) -> None:
    if kind == "multi":
        masker = dm.MultiNiftiMasker(mask_strategy="epi").fit([run_path, run_path])
    else:
        masker = dm.NiftiMasker(mask_strategy="epi").fit(run_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the multi report's "only the first run" warning
        report = masker.generate_report()
    page = tmp_path / f"{kind}.html"
    report.save_as_html(page)
    browser.set_viewport(width, 900)
    try:
        browser.events.clear()
        browser.open(page.as_uri())
        assert_offline(browser, page)
        png = browser.screenshot(full_page=True)
        (tmp_path / f"{kind}-{width}.png").write_bytes(png)  # kept for inspection
        pixels = decode_png(png)
        assert pixels.shape[1] == width, "the page is wider than the window"
        assert browser.evaluate("document.documentElement.scrollWidth") <= width
        white = (pixels.min(axis=2) >= 245).mean()
        assert white < MAX_WHITE_SHARE, f"the page is blank: {white:.1%} white"
        box = figure_box(browser)
        # The figure uses the window: a wide window shows it large (its labels
        # scale with it), a narrow one still shows all of it.
        assert box["width"] >= least_share * width, (box, width)
        assert box["x"] >= 0 and box["x"] + box["width"] <= width
        top, left = int(box["y"]), int(box["x"])
        figure = pixels[top : top + int(box["height"]), left : left + int(box["width"])]
        assert green_pixels(figure).sum() > 300
        assert "The mask includes" in browser.evaluate("document.body.innerText")

        # The estimator summary: parameters, fitted attributes and features fold
        # out on a click, without any script.
        assert browser.evaluate("document.scripts.length") == 0
        name = type(masker).__name__
        sections = browser.evaluate(
            "[...document.querySelectorAll('summary')].map(s => s.textContent.trim())"
        )
        assert sections == [
            name,
            "Parameters",
            "Fitted attributes",
            f"{masker.n_elements_:,} features",
        ]
        visible = "document.body.innerText.includes('n_elements_')"
        assert not browser.evaluate(visible)
        point = _summary_box(browser, "Fitted attributes")
        browser.click(point["x"], point["y"])
        assert browser.evaluate(visible)
        (tmp_path / f"{kind}-{width}-open.png").write_bytes(browser.screenshot(full_page=True))
    finally:
        browser.set_viewport(1280, 900)
