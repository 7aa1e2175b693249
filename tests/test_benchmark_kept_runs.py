"""Kept runs: the compact committed copy of a finished run holds every value the report and
the runs started from it read, and goes back only where the runs folder has none."""

import json

import pytest
import torch
from kept_runs import RESUME_ONLY, add_files, keep, restore
from protocol import evaluation, run_metrics, scalar_histories, target_losses

from moopt_lic import load_model, train
from moopt_lic.checkpoint import load_safely

TAGS = ("train/rate_bpp", "val/psnr", "balancer/weight_rate")


@pytest.fixture
def finished(tiny_config, tmp_path):
    """A finished, coded run that held a rate target with EqQP, logged every step."""
    config = tiny_config(balancer="eq-qp", target_bpp=0.5, steps=4, eval_every=2, log_every=1,
                         out=str(tmp_path / "runs" / "a"))  # fmt: skip
    train(config)
    folder = tmp_path / "runs" / "a"
    (folder / "evaluation.json").write_text(json.dumps({"bpp": 0.4, "psnr": 25.0}))
    return folder


def test_a_kept_run_reads_as_the_run_did(finished, tmp_path):
    """Every reader of the report returns the same values from the kept copy, to the bit;
    the scalars not asked for and the resume-only state are left behind."""
    kept = tmp_path / "kept" / "a"
    keep(finished, kept, TAGS, weights=True)
    assert run_metrics(kept) == run_metrics(finished)
    assert evaluation(kept) == evaluation(finished)
    # the run kept the last 2 of its 4 targeted losses: a validation reads back 2 steps
    assert target_losses(kept) == target_losses(finished) and len(target_losses(kept)) == 2
    everything = scalar_histories(finished, *TAGS, "train/distortion")
    assert scalar_histories(kept, *TAGS) == {tag: everything[tag] for tag in TAGS}
    assert all(everything[tag] for tag in TAGS)
    assert scalar_histories(kept, "train/distortion") == {"train/distortion": []}
    checkpoint = load_safely(kept / "checkpoint.pt")
    assert not set(RESUME_ONLY) & set(checkpoint)
    original, copy = load_model(finished / "checkpoint.pt"), load_model(kept / "checkpoint.pt")
    for (name, value), (_, kept_value) in zip(
        original.state_dict().items(), copy.state_dict().items(), strict=True
    ):
        assert torch.equal(value, kept_value), name


def test_weights_are_kept_only_for_a_run_others_start_from(finished, tmp_path):
    keep(finished, tmp_path / "kept" / "a", TAGS, weights=False)
    checkpoint = load_safely(tmp_path / "kept" / "a" / "checkpoint.pt")
    assert "model" not in checkpoint and checkpoint["step"] == 4
    size = (tmp_path / "kept" / "a" / "checkpoint.pt").stat().st_size
    assert size < (finished / "checkpoint.pt").stat().st_size / 5


def test_an_unfinished_run_is_not_kept(tiny_config, tmp_path):
    folder = tmp_path / "runs" / "stopped"
    folder.mkdir(parents=True)
    with pytest.raises(ValueError, match="not finished"):
        keep(folder, tmp_path / "kept" / "stopped", TAGS, weights=True)
    assert not (tmp_path / "kept" / "stopped").exists()


def test_a_diverged_run_is_kept_as_the_result_it_is(tmp_path):
    folder = tmp_path / "runs" / "nan"
    folder.mkdir(parents=True)
    (folder / "diverged.json").write_text(json.dumps({"diverged": "step 3: loss is nan"}))
    keep(folder, tmp_path / "kept" / "nan", TAGS, weights=False)
    assert sorted(p.name for p in (tmp_path / "kept" / "nan").iterdir()) == ["diverged.json"]


def test_restore_fills_only_a_missing_run_folder(finished, tmp_path):
    kept = tmp_path / "kept" / "a"
    keep(finished, kept, TAGS, weights=True)
    assert not restore(kept, finished)  # the run is there: untouched
    assert (finished / "checkpoint.pt").stat().st_size > (kept / "checkpoint.pt").stat().st_size
    elsewhere = tmp_path / "fresh" / "runs" / "a"
    assert restore(kept, elsewhere)
    assert run_metrics(elsewhere) == run_metrics(finished)
    assert not restore(tmp_path / "kept" / "never", tmp_path / "fresh" / "runs" / "never")
    assert not (tmp_path / "fresh" / "runs" / "never").exists()


def test_keeping_again_replaces_the_copy_and_leaves_no_partial_one(finished, tmp_path):
    kept = tmp_path / "kept" / "a"
    keep(finished, kept, TAGS, weights=False)
    keep(finished, kept, TAGS, weights=True)
    assert "model" in load_safely(kept / "checkpoint.pt")
    assert sorted(p.name for p in kept.parent.iterdir()) == ["a"]


def test_a_measurement_made_after_keeping_joins_the_copy_and_nothing_else_changes(
    finished, tmp_path
):
    """add_files copies the files the run has and the copy lacks, whole, and rewrites no
    file the copy had (a re-keep would rewrite its log under a new name)."""
    kept = tmp_path / "kept" / "a"
    keep(finished, kept, TAGS, weights=False)
    before = {path: path.stat().st_mtime_ns for path in kept.rglob("*")}
    (finished / "measured.json").write_text('{"rate_bpp": 0.2}')
    (finished / "metrics.json").write_text('{"changed": true}')  # kept already: not copied
    assert add_files(finished, kept, ("measured.json", "metrics.json", "absent.json")) == [
        "measured.json"
    ]
    assert (kept / "measured.json").read_text() == '{"rate_bpp": 0.2}'
    assert {path: path.stat().st_mtime_ns for path in kept.rglob("*") if path in before} == before
    assert sorted(p.name for p in kept.iterdir() if p.name not in {q.name for q in before}) == [
        "measured.json"
    ]
    assert add_files(finished, kept, ("measured.json",)) == []
