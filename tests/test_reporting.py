"""Tests of daskmask.reporting: real runs, compared with nilearn's report."""

from __future__ import annotations

import base64
import html
import re
import warnings
from pathlib import Path

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr

import daskmask as dm
from daskmask.datasets import generate_epi
from daskmask.reporting import HTMLReport, masker_report

nilearn_maskers = pytest.importorskip("nilearn.maskers")

SVG_URI = re.compile(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report_run")
    return generate_epi(folder / "run.nii", shape=(24, 28, 14), n_timepoints=5, seed=4)


def _text(document: str) -> str:
    """Visible text of an HTML document, whitespace collapsed."""
    without_tags = re.sub(r"<style>.*?</style>|<[^>]+>", " ", document, flags=re.S)
    return " ".join(html.unescape(without_tags).split())


def _coverage_sentence(document: str) -> str:
    match = re.search(r"The mask includes \d+ voxels \([\d.]+ %\) of the image\.", _text(document))
    assert match, "no coverage sentence"
    return match.group(0)


def _warnings_of(call) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    messages = [" ".join(str(w.message).split()) for w in caught if w.category is UserWarning]
    return result, messages


def _nilearn_report(masker):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return masker.generate_report()


def _svgs(document: str) -> list[str]:
    return [base64.b64decode(data).decode("utf-8") for data in SVG_URI.findall(document)]


def test_report_matches_nilearn_facts(run: Path) -> None:
    ours = dm.NiftiMasker(mask_strategy="epi").fit(run)
    theirs = nilearn_maskers.NiftiMasker(mask_strategy="epi").fit(str(run))
    report, messages = _warnings_of(ours.generate_report)
    assert messages == []
    document = report.get_standalone()
    assert _coverage_sentence(document) == _coverage_sentence(
        _nilearn_report(theirs).get_standalone()
    )
    assert "<title>daskmask - NiftiMasker report</title>" in document
    assert "<h1>NiftiMasker</h1>" in document
    assert 'id="warnings"' not in document
    assert f"daskmask {dm.__version__}" in _text(document)


def test_report_is_self_contained_and_shows_a_green_outline(run: Path) -> None:
    masker = dm.NiftiMasker().fit(run)
    document = masker.generate_report(title="Run 1").get_standalone()
    assert "<title>daskmask - Run 1 report</title>" in document
    for forbidden in ("http://", "https://", 'src="//', 'href="//', "<script", "<link"):
        assert forbidden not in document
    (svg,) = _svgs(document)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert re.search(r'<path[^>]*style="[^"]*stroke: #008000', svg), "no green outline"
    # The background image is embedded too (a data URI inside the SVG).
    assert "data:image/png;base64," in svg


def test_report_parameters_table(run: Path) -> None:
    masker = dm.NiftiMasker(mask_strategy="epi", mask_args={"opening": 2}, t_r=2.0).fit(run)
    text = _text(masker.generate_report().get_standalone())
    for name in masker.get_params():
        assert name in text
    assert "{'opening': 2}" in text
    assert "target_affine None" in text
    assert "t_r 2.0" in text


def test_report_of_mask_only_fit_matches_nilearn(run: Path) -> None:
    mask = dm.compute_epi_mask(run)
    ours, our_messages = _warnings_of(dm.NiftiMasker(mask_img=mask).fit().generate_report)
    theirs, their_messages = _warnings_of(
        nilearn_maskers.NiftiMasker(mask_img=mask).fit().generate_report
    )
    expected = "No image provided to fit in NiftiMasker. Setting image to mask for reporting."
    assert expected in their_messages
    assert our_messages == [expected]
    document = ours.get_standalone()
    assert expected in _text(document)
    assert _coverage_sentence(document) == _coverage_sentence(theirs.get_standalone())
    assert len(_svgs(document)) == 1


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda cls, run: cls(), id="not-fitted"),
        pytest.param(lambda cls, run: cls(reports=False).fit(run), id="reports-off"),
        pytest.param(
            lambda cls, run: cls(reports=False).fit(run).set_params(reports=True),
            id="reports-off-at-fit",
        ),
    ],
)
def test_report_warnings_match_nilearn(run: Path, make) -> None:
    ours, our_messages = _warnings_of(make(dm.NiftiMasker, run).generate_report)
    _, their_messages = _warnings_of(make(nilearn_maskers.NiftiMasker, str(run)).generate_report)
    assert len(our_messages) == 1
    assert our_messages[0] in their_messages
    document = ours.get_standalone()
    assert 'id="warnings"' in document and our_messages[0] in _text(document)
    assert _svgs(document) == []


def test_report_with_target_affine_hover_overlay(run: Path) -> None:
    ours = dm.NiftiMasker(target_affine=np.eye(3) * 4).fit(run)
    theirs = nilearn_maskers.NiftiMasker(target_affine=np.eye(3) * 4).fit(str(run))
    report = ours.generate_report()
    document = report.get_standalone()
    before, after = _svgs(document)
    assert "stroke: #008000" in before and "stroke: #008000" in after
    assert 'class="dm-after"' in document
    assert ".dm-stack:hover .dm-after { opacity: 1; }" in document
    caption = _text(document)
    assert "Shown: the input image with the mask before resampling." in caption
    assert "Hover over the picture to see the image and the mask resampled" in caption
    assert _coverage_sentence(document) == _coverage_sentence(
        _nilearn_report(theirs).get_standalone()
    )
    # No accumulation across calls: the same document again.
    assert ours.generate_report().get_standalone() == document
    assert document.count("Hover over the picture") == 1


def test_no_hover_overlay_without_resampling(run: Path) -> None:
    document = dm.NiftiMasker().fit(run).generate_report().get_standalone()
    assert 'class="dm-after"' not in document
    assert "Hover over" not in document


def test_report_reads_one_volume_only(run: Path) -> None:
    """The fitted run is a dask array whose other volumes raise when read."""
    image = nib.load(run)
    data = np.asanyarray(image.dataobj)

    def read(t: int) -> np.ndarray:
        if t != data.shape[3] // 2:
            raise RuntimeError(f"volume {t} was read")
        return data[..., t : t + 1]

    lazy = xr.DataArray(
        da.concatenate(
            [
                da.from_delayed(dask.delayed(read)(t), data.shape[:3] + (1,), data.dtype)
                for t in range(data.shape[3])
            ],
            axis=3,
        ),
        dims=("x", "y", "z", "time"),
        attrs={"affine": image.affine, "source": str(run)},
    )
    mask = dm.compute_epi_mask(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Given mask will be used"
        masker = dm.NiftiMasker(mask_img=mask).fit(lazy)
    with pytest.raises(RuntimeError, match="was read"):
        lazy.compute()
    report, messages = _warnings_of(masker.generate_report)
    assert messages == []
    assert len(_svgs(report.get_standalone())) == 1


def test_list_of_4d_runs_warns(run: Path) -> None:
    masker = dm.NiftiMasker().fit([run, run])
    _, messages = _warnings_of(masker.generate_report)
    assert messages == [
        "A list of 4D subject images were provided to fit. "
        "Only first subject is shown in the report."
    ]


def test_html_report_outputs(run: Path, tmp_path: Path) -> None:
    report = masker_report(dm.NiftiMasker().fit(run), title="Sub <01>")
    assert isinstance(report, HTMLReport)
    assert report._repr_html_() == str(report) == report.body
    assert "<h1>Sub &lt;01&gt;</h1>" in report.body
    assert report.body in report.get_standalone()
    assert report.get_standalone().startswith("<!DOCTYPE html>")
    path = report.save_as_html(tmp_path / "report.html")
    assert path.read_text(encoding="utf-8") == report.get_standalone()
    iframe = report.get_iframe()
    assert iframe.startswith('<iframe srcdoc="') and 'width="800" height="800"' in iframe
    srcdoc = re.match(r'<iframe srcdoc="([^"]*)"', iframe).group(1)
    assert html.unescape(srcdoc) == report.get_standalone()
    assert 'width="300" height="200"' in report.get_iframe(300, 200)


def test_html_report_resize() -> None:
    report = HTMLReport("<p>x</p>", title="t")
    assert (report.width, report.height) == (800, 800)
    assert report.resize(640, 480) is report
    assert (report.width, report.height) == (640, 480)
    with pytest.warns(UserWarning, match="Using the default instead, 800"):
        report.resize("wide", 300)
    assert (report.width, report.height) == (800, 300)


def test_report_says_which_volume_it_shows(run: Path) -> None:
    text = _text(dm.NiftiMasker().fit(run).generate_report().get_standalone())
    n = nib.load(run).shape[3]
    assert f"volume {n // 2} (the middle one of {n}, numbered from 0)" in text
    assert "the image the mask was computed from" not in text
    mask_only = dm.NiftiMasker(mask_img=dm.compute_epi_mask(run)).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "the mask itself" in _text(mask_only.generate_report().get_standalone())


def test_report_estimator_summary_is_collapsible(run: Path) -> None:
    masker = dm.NiftiMasker(mask_strategy="epi").fit(run)
    document = masker.generate_report().get_standalone()
    sections = re.findall(r"<details[^>]*><summary>([^<]+)</summary>", document)
    n = masker.n_elements_
    assert sections == ["NiftiMasker", "Parameters", "Fitted attributes", f"{n:,} features"]
    attributes = re.search(r"Fitted attributes</summary>(.*?)</details>", document, re.S)
    text = _text(attributes.group(1))
    for name in ("affine_", "clean_args_", "mask_img_", "n_elements_"):
        assert name in text
    assert f"n_elements_ {n}" in text
    assert f"Nifti1Image(shape={masker.mask_img_.shape})" in text
    # The listed features are transform's first voxel columns, in order.
    listed = re.findall(r"<li>voxel \((\d+), (\d+), (\d+)\)</li>", document)
    signals = masker.transform(run)
    first = [tuple(str(int(signals.coords[c].values[v])) for c in "ijk") for v in range(100)]
    assert listed == first


def test_multi_masker_report_matches_nilearn(run: Path, tmp_path: Path) -> None:
    other = generate_epi(tmp_path / "run2.nii", shape=(24, 28, 14), n_timepoints=5, seed=5)
    ours = dm.MultiNiftiMasker(mask_strategy="epi").fit([run, other])
    theirs = nilearn_maskers.MultiNiftiMasker(mask_strategy="epi").fit([str(run), str(other)])
    report, messages = _warnings_of(ours.generate_report)
    _, their_messages = _warnings_of(lambda: theirs.generate_report())
    assert messages and set(messages) <= set(their_messages)
    document = report.get_standalone()
    assert _coverage_sentence(document) == _coverage_sentence(
        _nilearn_report(theirs).get_standalone()
    )
    assert "<h1>MultiNiftiMasker</h1>" in document
    assert "of the first of the 2 runs" in _text(document)
    (svg,) = _svgs(document)
    assert "stroke: #008000" in svg
    assert f"{ours.n_elements_:,} features" in document


def test_report_uses_the_maskers_cmap(run: Path) -> None:
    gray = dm.NiftiMasker().fit(run).generate_report().get_standalone()
    hot = dm.NiftiMasker(cmap="hot").fit(run).generate_report().get_standalone()
    assert _svgs(gray)[0] != _svgs(hot)[0]
