"""alz_monai.html_report: one self-contained page per run and one for runs side by side, read as text and rendered
in headless Chromium (skipped, with the reason, where Chromium is not installed)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import BundleRun
from PIL import Image

from alz_monai import layout
from alz_monai.cli import build_parser
from alz_monai.compare import compare_runs
from alz_monai.html_report import (
    REPORT_NAME,
    TIMELINE_NAME,
    load_run,
    render_report,
    write_comparison_report,
    write_cv_report,
    write_run_report,
)

CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser")) if path), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
BAND_RESAMPLES = 50
FIGURES_PER_EVALUATION = 5
RUN_CONFIG = {
    "created": "2026-01-01T10:00:00+00:00",
    "git_commit": "0123456789abcdef",
    "knobs": {"learning_rate": 0.000125, "spatial_size": [32, 32, 32], "classes": ["CN", "AD"]},
    "components": {"network_def": {"name": "resnet18", "in_channels": 1}},
    "versions": {"monai": "1.6.1"},
}
TIMELINE = {"caching": {"start": "2026-01-01T10:00:00+00:00", "end": "2026-01-01T10:00:30+00:00", "seconds": 30.0},
            "training": {"start": "2026-01-01T10:00:30+00:00", "end": "2026-01-01T10:05:30+00:00", "seconds": 300.0}}


_HIDDEN_TAGS = ("script", "style", "title")


class _Text(HTMLParser):
    """The visible text of a page's body (scripts and styles left out) and the sources of its images."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.images: list[str] = []
        self.body: dict[str, str] = {}
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden += 1
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag == "body":
            self.body = {key: value or "" for key, value in attrs}

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.parts)).strip()


def parse(html: str) -> _Text:
    parser = _Text()
    parser.feed(html)
    return parser


def copy_run(run_dir: Path, target: Path) -> Path:
    """The run folder without its checkpoints' weights (the report reads none)."""
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("*.pt", ".lock"))
    return target


@pytest.fixture(scope="module")
def recorded_run(stage1_run: BundleRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the stage-1 run with a known recorded configuration and timeline, and its report."""
    run = copy_run(stage1_run.output_dir, tmp_path_factory.mktemp("report") / "run")
    (run / layout.RUN_CONFIG_NAME).write_text(yaml.safe_dump(RUN_CONFIG), encoding="utf-8")
    (run / TIMELINE_NAME).write_text(json.dumps(TIMELINE), encoding="utf-8")
    write_run_report(run, band_resamples=BAND_RESAMPLES)
    return run


def _formatted(value: float) -> str:
    return f"{value:.3f}"


def test_report_is_one_self_contained_file(recorded_run: Path) -> None:
    html = (recorded_run / REPORT_NAME).read_text(encoding="utf-8")
    page = parse(html)
    assert not re.findall(r"""(?:src|href)\s*=\s*["'](?!data:)""", html)  # nothing to fetch, not even locally
    assert "http://" not in html and "https://" not in html
    evaluations = load_run(recorded_run, band_resamples=BAND_RESAMPLES).evaluations
    assert len(page.images) == FIGURES_PER_EVALUATION * len(evaluations) + 1  # + the training curves
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.format == "PNG" and min(image.size) > 100
    assert not list(recorded_run.glob(f".{REPORT_NAME}.*"))  # written atomically, no temporary file left
    assert "@media print" in html


def test_report_shows_metrics_classes_data_configuration_and_timeline(recorded_run: Path) -> None:
    text = parse((recorded_run / REPORT_NAME).read_text(encoding="utf-8")).text
    test = json.loads((recorded_run / "reports" / "test_metrics.json").read_text())
    assert text.startswith("alz-monai run report resnet18: CN vs AD")
    for name in ("balanced_accuracy", "auc", "sensitivity"):
        interval = test["confidence_intervals"][name]
        assert f"{_formatted(test[name])} [{_formatted(interval['low'])}, {_formatted(interval['high'])}]" in text
    for name, values in test["per_class"].items():
        assert f"{name} {values['support']} {_formatted(values['precision'])} {_formatted(values['recall'])}" in text
    assert "Test split" in text and "Validation, best epoch" in text

    table = pd.read_csv(recorded_run / layout.SPLIT_TABLE_NAME, sep="\t")
    label = "label" if "label" in table else "label_name"
    for split, part in table.groupby("split"):
        cells = [f"{(part[label] == name).sum()} ({part.loc[part[label] == name, 'participant_id'].nunique()})"
                 for name in ("CN", "AD")]
        assert f"{split} {cells[0]} {cells[1]} {len(part)} ({part['participant_id'].nunique()})" in text
    assert "learning_rate 0.000125" in text and "spatial_size [32, 32, 32]" in text
    assert "name: resnet18" in text and "code at commit 0123456789abcdef" in text
    assert "caching 2026-01-01 10:00:00 UTC 30.0 s" in text and "training 2026-01-01 10:00:30 UTC 5.0 min" in text


def test_report_without_recorded_configuration_says_so_derives_the_timeline_and_flags_stale_reports(
    stage1_run: BundleRun, tmp_path: Path
) -> None:
    run = copy_run(stage1_run.output_dir, tmp_path / "run")
    (run / layout.RUN_CONFIG_NAME).unlink(missing_ok=True)
    (run / "reports" / layout.STALE_MARKER_NAME).write_text("the run was resumed and found a better model\n")
    report = load_run(run, band_resamples=0)
    phases = {phase.name: phase for phase in report.timeline}
    training = phases[f"training ({stage1_run.num_epochs} epochs, validation included)"]
    assert training.seconds > 0 and training.source == "TensorBoard event times"
    assert phases["evaluation: test split"].seconds >= 0
    assert report.curves_png is not None and report.model is None
    text = parse(render_report(report)).text
    assert "recorded no run_config.yaml" in text
    assert "Stale: the run was resumed and found a better model" in text


def test_figures_come_from_the_run_files_where_it_kept_no_predictions(stage1_run: BundleRun, tmp_path: Path) -> None:
    run = copy_run(stage1_run.output_dir, tmp_path / "run")
    (run / "reports" / "test_predictions.csv").unlink()
    test = next(evaluation for evaluation in load_run(run, band_resamples=0).evaluations if evaluation.split == "test")
    assert test.predictions is None
    assert test.figures == {kind: (run / "reports" / f"test_{kind}.png").read_bytes() for kind in test.figures}
    assert len(test.figures) == FIGURES_PER_EVALUATION


def test_comparison_report_puts_two_runs_side_by_side(
    stage1_run: BundleRun, stage2_run: BundleRun, tmp_path: Path
) -> None:
    comparison = compare_runs(stage1_run.output_dir, stage2_run.output_dir, bootstrap_resamples=BAND_RESAMPLES)
    target = write_comparison_report({"stage 1": stage1_run.output_dir, "stage 2": stage2_run.output_dir},
                                     tmp_path / "comparison.html", comparison=comparison,
                                     band_resamples=BAND_RESAMPLES)
    page = parse(target.read_text(encoding="utf-8"))
    aucs = [json.loads((run.output_dir / "reports" / "test_metrics.json").read_text())["auc"]
            for run in (stage1_run, stage2_run)]
    assert re.search(rf"ROC AUC {_formatted(aucs[0])} \[[^]]+\] {_formatted(aucs[1])} \[", page.text)
    assert f"accuracy, McNemar p = {comparison['mcnemar']['p_value']:.3g}" in page.text
    assert "AUC of AD, paired DeLong" in page.text
    assert len(page.images) == 2 * FIGURES_PER_EVALUATION + 2
    with pytest.raises(ValueError, match="at least 2 runs"):
        write_comparison_report([stage1_run.output_dir], tmp_path / "one.html")


def test_cross_validation_report_shows_the_folds_beside_the_ensemble_and_different_scans_are_flagged(
    stage1_run: BundleRun, tmp_path: Path
) -> None:
    cv_dir = tmp_path / "cv"
    copy_run(stage1_run.output_dir, cv_dir / "fold_0")
    (cv_dir / "reports").mkdir()
    for name in ("test_metrics.json", "test_predictions.csv"):  # what aggregate_cross_validation writes: no figures
        shutil.copy(stage1_run.output_dir / "reports" / name, cv_dir / "reports" / name)
    (cv_dir / "cv_summary.json").write_text(json.dumps({"folds": [0], "num_folds": 2}), encoding="utf-8")
    text = parse(write_cv_report(cv_dir, band_resamples=0).read_text(encoding="utf-8")).text
    assert text.startswith("alz-monai comparison report Cross-validation, 1 of 2 folds")
    assert "fold 0" in text and "ensemble" in text
    assert "scored different scans" not in text  # the same test split

    other = copy_run(stage1_run.output_dir, tmp_path / "other")
    predictions = pd.read_csv(other / "reports" / "test_predictions.csv")
    predictions.iloc[1:].to_csv(other / "reports" / "test_predictions.csv", index=False)
    text = parse(write_comparison_report([cv_dir / "fold_0", other], tmp_path / "c.html", band_resamples=0)
                 .read_text(encoding="utf-8")).text
    assert "The runs scored different scans" in text


def test_report_command_writes_one_page_or_refuses_several_without_output(recorded_run: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    target = tmp_path / "page.html"
    args = parser.parse_args(["report", str(recorded_run), "--output", str(target), "--band-resamples", "10"])
    assert args.func(args) == 0
    assert f"report written to {target}" in capsys.readouterr().out and target.stat().st_size > 10_000
    args = parser.parse_args(["report", str(recorded_run), str(recorded_run)])
    with pytest.raises(ValueError, match="--output"):
        args.func(args)


def chromium(*arguments: str, profile: Path) -> str:
    """Headless Chromium, isolated from the network and from any user profile; returns its standard output."""
    completed = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--hide-scrollbars", *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=120, check=True)
    return completed.stdout


@needs_chromium
def test_report_renders_in_chromium_with_every_figure_loaded(recorded_run: Path, tmp_path: Path) -> None:
    html = (recorded_run / REPORT_NAME).read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"  # the same page with one figure that cannot decode: the check must see it
    broken.write_text(re.sub(r'src="data:image/png;base64,[^"]+"', 'src="data:image/png;base64,AAAA"', html, count=1),
                      encoding="utf-8")
    expected = len(parse(html).images)
    for page, loaded in ((recorded_run / REPORT_NAME, expected), (broken, expected - 1)):
        dom = parse(chromium("--virtual-time-budget=10000", "--dump-dom", page.as_uri(), profile=tmp_path / "profile"))
        assert (dom.body.get("data-figures"), dom.body.get("data-figures-loaded")) == (str(expected), str(loaded))
    test = json.loads((recorded_run / "reports" / "test_metrics.json").read_text())
    assert "Test split" in dom.text and f"ROC AUC {_formatted(test['auc'])}" in dom.text

    screenshot = tmp_path / "report.png"
    chromium("--window-size=1280,1600", f"--screenshot={screenshot}", (recorded_run / REPORT_NAME).as_uri(),
             profile=tmp_path / "profile")
    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    assert pixels.shape == (1600, 1280, 3)
    band = pixels[:100].reshape(-1, 3).mean(axis=0)
    assert band[2] > band[0] + 40  # the blue headline band is drawn, so the style sheet applied
