"""The documented hippocampus study regenerates from its committed rows, exactly."""

import pathlib

import pytest

from slicejax.report import summary as report

pytestmark = pytest.mark.slow  # every test here runs for seconds: launches, subprocesses or whole reports

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_the_study_document_regenerates_from_the_committed_rows(tmp_path):
  study = DOCS / "hippocampus_study"
  report.run([study / "study2d", study / "interp", study / "study3d"], tmp_path / "report",
             preamble=study / "protocol.md", document=tmp_path / "hippocampus_study.md")
  regenerated = (tmp_path / "hippocampus_study.md").read_text()
  committed = (DOCS / "hippocampus_study.md").read_text()
  # Only the figure links differ: they point into the output folder, relative to the document.
  assert regenerated.replace("](report/", "](hippocampus_study/report/") == committed
  assert "## Findings" in committed and "## How this report decides" in committed and "p Holm" in committed
  assert "## Trust gate" in committed and "inconclusive: undertrained" in committed
