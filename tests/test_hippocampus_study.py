"""The documented hippocampus studies regenerate from their committed rows, exactly."""

import importlib.util
import json
import pathlib
import re

import pytest

from slicejax.report import summary as report

pytestmark = pytest.mark.slow  # every test here runs for seconds: launches, subprocesses or whole reports

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
# The report's statistics flags a document's command may give, with their types.
STATS_FLAGS = {"alpha": float, "margin": float, "min_seeds": int, "steps_tolerance": float, "steps_seeds": int}


def _regenerate(tmp_path, document: str) -> tuple[str, str]:
  """(regenerated, committed) text of `document` (relative to docs/), from the report command its preamble gives,
  run in a copy of the docs layout under `tmp_path` (the rows are read where they are committed)."""
  committed = (DOCS / document).read_text()
  command = re.search(r"```bash\n(\.venv/bin/python -m slicejax\.report .*?)\n(?:\.venv|```)", committed, re.S).group(1)
  flags = dict(re.findall(r"--(\w+)=(\S+)", command.replace("\\\n", " ")))
  workdirs = re.findall(r"--workdir=(\S+)", command)
  assert flags["document"] == f"docs/{document}"
  root = DOCS.parent
  out = tmp_path / flags["out"]
  (tmp_path / flags["document"]).parent.mkdir(parents=True, exist_ok=True)
  report.run([root / w for w in workdirs], out, preamble=root / flags["preamble"],
             document=tmp_path / flags["document"],
             families=root / flags["families"] if "families" in flags else None,
             retrained=[int(b) for b in flags["retrained"].split(",")] if "retrained" in flags else None,
             **{k: kind(flags[k]) for k, kind in STATS_FLAGS.items() if k in flags})
  return (tmp_path / flags["document"]).read_text(), committed


def test_the_converged_study_document_regenerates_from_the_committed_rows(tmp_path):
  regenerated, committed = _regenerate(tmp_path, "hippocampus_study.md")
  assert regenerated == committed
  assert committed.startswith("# Which slices") and "\n# " not in committed  # one title: the preamble's
  assert "## Findings" in committed and "## Recommendation per budget" in committed and "p Holm" in committed
  # The recipe converged: the reference reaches 0.85 and the trust gate is open, at most 10% of the cells still
  # improving.
  improving, cells = map(int, re.search(r"## Trust gate\n\nOpen: (\d+) of (\d+) cells", committed).groups())
  assert improving <= 0.1 * cells
  reference = re.search(r"\| 2D \| \d+ \| 180 \| all \|.*?\| (0\.\d+) ± ", committed).group(1)
  assert float(reference) >= 0.85
  # Every budget's steps check is decided on the 5 study seeds (the command's --steps_seeds=5): budget 72's steps
  # stand, budget 36 failed at 1,500 and was trained again in full at 3,000, which the document reads.
  assert "--steps_seeds=5" in committed and "**pending**" not in committed
  assert "- 2D, budget 36: **retrained**" in committed and "- 2D, budget 72: **steps stand**" in committed
  assert re.search(r"\| 2D \| 36 \| 3000 \(study\) \|", committed)


def test_the_first_study_document_regenerates_from_the_committed_rows(tmp_path):
  regenerated, committed = _regenerate(tmp_path, "hippocampus_study/first_study.md")
  assert regenerated == committed
  assert "## Trust gate\n\n**Closed: every finding is `inconclusive: undertrained`.**" in committed


def test_the_converged_study_s_planned_families_are_those_of_its_parts():
  # The document adjusts each Holm family over the comparisons the whole study will make (`--families`): the
  # committed plan must be what the parts' configs expand to under the report's rules.
  spec = importlib.util.spec_from_file_location("hippocampus", DOCS.parent / "configs" / "hippocampus.py")
  hippocampus = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(hippocampus)
  committed = json.loads((DOCS / "hippocampus_study" / "converged" / "families.json").read_text())
  assert committed == hippocampus.converged_families()
  # By hand: allocation 2 + 2 + 4 + 2 (B 36, 72, 144, 288; random and fixed); ual's selections 4 + 6 (B 36, 144).
  assert committed["allocation"] == 10 and committed["selection, ual"] == 10 and committed["interpolation, 2D"] == 3
  # Rounds at B 36 and 144: entropy, ensemble and hybrid against passive (6) and against one-shot random and fixed
  # (12).
  assert committed["selection, rounds, control"] == 6 and committed["selection, rounds, one-shot"] == 12


def test_a_failed_doubling_check_extends_to_the_other_seeds_at_the_same_steps():
  spec = importlib.util.spec_from_file_location("hippocampus", DOCS.parent / "configs" / "hippocampus.py")
  hippocampus = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(hippocampus)
  first, more = (hippocampus.get_config(f"converged=doubling,budget=72{extra}") for extra in ("", ",more=True"))
  assert (first.study.seeds, more.study.seeds) == ((0, 1), (2, 3, 4))
  assert first.train.steps == more.train.steps == 2 * hippocampus.CONVERGED_STEPS[72]
  assert first.study.slices_per_volume == more.study.slices_per_volume == (1, 4)
  with pytest.raises(ValueError, match="more extends the doubling check only"):
    hippocampus.get_config("converged=grid,budget=72,more=True")


def test_a_budget_s_parts_cover_its_grid_once_at_the_grid_s_and_the_doubled_steps():
  # A budget whose 5-seed check fails trains again once at the doubled steps: the doubling parts (random extremes,
  # seeds 0-1 and 2-4) and `retrain` (the rest; at 144 also `middle`, random at 36 x 4) hold every point of the
  # grid exactly once.
  from slicejax.study import grid  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("hippocampus", DOCS.parent / "configs" / "hippocampus.py")
  hippocampus = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(hippocampus)
  depths = {f"case_{i}": hippocampus.POOL_MIN_DEPTH for i in range(180)}

  def points(part):
    config = hippocampus.get_config(f"converged={part}")
    return config.train.steps, grid.expand(config.study, depths)

  for budget, steps in hippocampus.CONVERGED_STEPS.items():
    parts = [f"doubling,budget={budget}", f"doubling,budget={budget},more=True", f"retrain,budget={budget}"]
    parts += [f"retrain,budget={budget},middle=True"] if budget == 144 else []
    expanded = [points(part) for part in parts]
    assert {s for s, _ in expanded} == {2 * steps}
    together = [p for _, ps in expanded for p in ps]
    assert len(together) == len(set(together))
    assert set(together) == set(points(f"grid,budget={budget}")[1])
    # The grid's shares (cells=...) at the grid's own steps, the same points, so that a budget's extremes (and its
    # steps check) can run first.
    shares = [points(f"grid,budget={budget},cells={cells}") for cells in ("extremes", "middle", "others")
              if cells != "middle" or budget == 144]
    assert {s for s, _ in shares} == {steps}
    together = [p for _, ps in shares for p in ps]
    assert len(together) == len(set(together))
    assert set(together) == set(points(f"grid,budget={budget}")[1])
    extremes = {(p.slices_per_volume, p.selection) for p in shares[0][1]}
    assert extremes == {(rho, "random") for rho in hippocampus.CONVERGED_DOUBLING[budget]}
    # Apart from the cells, a share is configured as the whole grid (so that the report merges them).
    whole = hippocampus.get_config(f"converged=grid,budget={budget}").to_dict()
    share = hippocampus.get_config(f"converged=grid,budget={budget},cells=others").to_dict()
    assert {k: v for k, v in share.items() if k != "study"} == {k: v for k, v in whole.items() if k != "study"}
  (_, middle), = [points("retrain,budget=144,middle=True")]
  assert {(p.volumes, p.slices_per_volume, p.selection) for p in middle} == {(36, 4, "random")}
  with pytest.raises(ValueError, match="budget 72 has no random cell between its extremes"):
    hippocampus.get_config("converged=retrain,budget=72,middle=True")
  with pytest.raises(ValueError, match="budget 72 has no random cell between its extremes"):
    hippocampus.get_config("converged=grid,budget=72,cells=middle")
  with pytest.raises(ValueError, match="cells must be extremes, middle or others"):
    hippocampus.get_config("converged=grid,budget=72,cells=random")
  with pytest.raises(ValueError, match="cells splits the grid only"):
    hippocampus.get_config("converged=retrain,budget=72,cells=others")
  # Budget 144 trained again at 8,000 steps would leave budget 288 at 4,000 behind it: its parts are refused until
  # its steps are raised.
  hippocampus.CONVERGED_RETRAINED = hippocampus.CONVERGED_RETRAINED + (144,)
  for part in ("grid,budget=288,cells=extremes", "grid,budget=288", "interp,budget=288", "doubling,budget=288",
               "retrain,budget=288"):
    with pytest.raises(ValueError, match="budget 288 trains .* steps, fewer than budget 144's 8000"):
      hippocampus.get_config(f"converged={part}")
  assert hippocampus.get_config("converged=grid3d,budget=288").train.steps == 4000  # 3D is not a 2D budget
  assert hippocampus.get_config("converged=grid,budget=144,cells=others").train.steps == 4000  # the grid's own
