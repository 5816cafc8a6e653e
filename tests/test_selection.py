"""anomaly-train -a auto: candidates trained, scored on synthetic defects, the best kept."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from anomaly.cli import train as train_cli
from anomaly.cli.common import run
from anomaly.selection import AUROC_TIE, CandidateScore, choose, score_model
from tests.conftest import train_args


def _score(name, auroc, pixel=None):
    return CandidateScore(name, auroc, pixel, {}, 10, 35, 0, 4)


def test_choose_takes_the_best_auroc_then_aupro_then_the_earliest():
    assert choose([_score("a", 0.90, 0.9), _score("b", 0.97, 0.1), _score("c", 0.95, 0.99)]) == 1
    # within the tie margin the better localisation wins; an image-level detector has no AUPRO
    assert choose([_score("a", 0.97, None), _score("b", 0.97 - AUROC_TIE / 2, 0.5)]) == 1
    assert choose([_score("a", 0.97, 0.5), _score("b", 0.97, 0.5)]) == 0
    assert choose([_score("a", None, None), _score("b", 0.6, None)]) == 1


def test_auto_keeps_the_best_candidate_with_its_selection_table(demo_root, tmp_path, capsys):
    out = tmp_path / "models"
    argv = train_args(demo_root, out, "-a", "auto", "--candidates", "padim,pixel-gaussian", "--seed", "3")
    assert train_cli.main(argv) == 0
    printed = capsys.readouterr().out
    (kept,) = [p.parent for p in out.rglob("config.yaml")]  # the other candidate is removed
    with (kept / "selection.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["detector"] for r in rows] == ["padim", "pixel-gaussian"]
    (winner,) = [r for r in rows if r["chosen"] == "true"]
    assert winner["detector"] in kept.relative_to(out).parts
    loser = next(r for r in rows if r is not winner)
    assert float(winner["image_auroc"]) >= float(loser["image_auroc"]) - AUROC_TIE
    assert f"chose {winner['detector']}" in printed and "next: anomaly-finetune" in printed
    assert (kept / "selection.png").stat().st_size > 0
    assert winner["synthetic_seed"] == "3"
    assert int(winner["n_synthetic"]) == int(winner["n_validation"]) * int(winner["copies"])
    # the synthetic set and the scores are remade from what the table records
    again = score_model(kept, seed=int(winner["synthetic_seed"]))
    assert f"{again.image_auroc:.4f}" == winner["image_auroc"] and again.copies == int(winner["copies"])
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


@pytest.mark.parametrize("extra, needles", [
    (["-a", "padim", "--candidates", "fre"], ("--candidates", "only with -a auto")),
    (["-a", "auto", "--candidates", "padim,nosuch"], ("--candidates", "nosuch")),
    (["-a", "auto", "--candidates", "padim,padim"], ("--candidates", "distinct")),
    (["-a", "auto", "--candidates", "padim,fre", "--coreset-ratio", "0.1"], ("coreset", "any candidate")),
])
def test_auto_refuses_bad_candidates_before_training(demo_root, tmp_path, capsys, extra, needles):
    out = tmp_path / "models"
    code = run(train_cli.main, train_args(demo_root, out, *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists() or not any(out.iterdir())


def test_score_model_needs_no_test_image(trained, tmp_path):
    """The autoencoder of the shared fixture scores on its validation images alone, seeded."""
    first, second = score_model(trained, seed=1), score_model(trained, seed=1)
    assert first.image_auroc == second.image_auroc and first.aupro == second.aupro
    assert 0.0 <= first.image_auroc <= 1.0 and first.n_validation >= 1
    assert set(first.auroc_by_kind) >= {"scar", "blob", "crack"}
    assert Path(first.model_dir).samefile(trained)
