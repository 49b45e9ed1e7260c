"""Batch audits: predictions.jsonl (resumable), metrics.json, report.html, bad input."""

import json

import pytest
from PIL import Image

from agent.audit import (AuditError, AuditInterrupted, PredictionWriter, pick_references, read_predictions,
                         run_audit)
from tests.surface_fakes import FakeAgent, make_fake_agent, make_loco, make_parent_only_prepare_agent


@pytest.fixture
def loco(tmp_path):
    return make_loco(tmp_path / "data")


def _run(root, out, **kw):
    kw.setdefault("agent_factory", make_fake_agent)
    kw.setdefault("progress", False)
    return run_audit(root, out=out, **kw)


def test_audit_writes_predictions_metrics_and_report(loco, tmp_path):
    out = tmp_path / "out"
    result = _run(loco, out, k=2)
    records = read_predictions(out / "predictions.jsonl")
    assert len(records) == 8 and result.scored_now == 8 and result.errors == 0
    labels = sorted(r.label for r in records)
    assert labels == ["good"] * 3 + ["logical"] * 3 + ["structural"] * 2
    logical = [r for r in records if r.label == "logical"]
    assert all(r.is_anomalous for r in logical)
    assert all(r.failed and r.failed[0].expected == 1 and r.failed[0].observed in (2, 3) for r in logical)

    metrics = json.loads((out / "metrics.json").read_text())
    toy = metrics["categories"]["toy_box"]
    assert toy["auroc_logical"] == 1.0 and toy["n_logical"] == 3 and toy["n_structural"] == 2
    assert toy["auroc_mean"] == pytest.approx((toy["auroc_logical"] + toy["auroc_structural"]) / 2)
    assert metrics["timing"]["images_per_second"] > 0
    assert "f1_max" in toy and "accuracy" in toy

    html = (out / "report.html").read_text()
    assert "toy_box" in html and "data:image/png;base64," in html
    assert "src=\"http" not in html  # self-contained
    assert (out / "report.html").stat().st_size < 2_000_000
    flagged = [r for r in records if r.is_anomalous]
    assert all((out / r.overlay).is_file() for r in flagged)
    assert all(r.image_id in html for r in flagged)


def test_references_are_spread_over_train_good():
    paths = [f"{i:03d}.png" for i in range(10)]
    assert pick_references(paths, 4) == ["000.png", "002.png", "005.png", "007.png"]
    assert pick_references(paths[:3], 4) == paths[:3]
    with pytest.raises(AuditError, match="at least 1"):
        pick_references(paths, 0)


def test_agent_prepared_once_per_category(loco, tmp_path, monkeypatch):
    agents = []

    def factory():
        agents.append(FakeAgent())
        return agents[-1]

    _run(loco, tmp_path / "out", agent_factory=factory)
    assert len(agents) == 1 and agents[0].prepare_calls == 1


def test_limit_then_resume_scores_only_the_rest(loco, tmp_path):
    out = tmp_path / "out"
    first = _run(loco, out, limit=3)
    assert first.scored_now == 3
    second = _run(loco, out)
    assert second.resumed == 3 and second.scored_now == 5
    ids = [r.image_id for r in read_predictions(out / "predictions.jsonl")]
    assert len(ids) == len(set(ids)) == 8


def test_ctrl_c_leaves_a_resumable_file(loco, tmp_path):
    class Interrupting(FakeAgent):
        calls = 0

        def run_prepared(self, ctx, image, **kw):
            Interrupting.calls += 1
            if Interrupting.calls == 4:
                raise KeyboardInterrupt
            return super().run_prepared(ctx, image, **kw)

    out = tmp_path / "out"
    with pytest.raises(AuditInterrupted, match="after 3 of 8 images") as info:
        _run(loco, out, agent_factory=Interrupting)
    assert "run the same command again to resume" in str(info.value)
    assert len(read_predictions(out / "predictions.jsonl")) == 3
    assert not (out / "metrics.json").exists()
    resumed = _run(loco, out)
    assert resumed.resumed == 3 and resumed.scored_now == 5


def test_torn_last_line_is_repaired_and_rescored(loco, tmp_path):
    out = tmp_path / "out"
    _run(loco, out, limit=2)
    pred = out / "predictions.jsonl"
    pred.write_text(pred.read_text() + '{"image_id": "toy_box/good/00')  # hard kill mid-write
    assert len(read_predictions(pred)) == 2
    result = _run(loco, out)
    assert result.scored_now == 6
    for line in pred.read_text().splitlines():
        json.loads(line)


def test_whole_last_record_without_newline_is_kept(loco, tmp_path):
    out = tmp_path / "out"
    _run(loco, out, limit=2)
    pred = out / "predictions.jsonl"
    pred.write_text(pred.read_text().rstrip("\n"))  # e.g. a file joined by hand: complete, no final newline
    result = _run(loco, out)
    assert result.resumed == 2 and result.scored_now == 6
    ids = [r.image_id for r in read_predictions(pred)]
    assert len(ids) == len(set(ids)) == 8


def test_resume_with_other_references_or_rules_is_refused(loco, tmp_path):
    out = tmp_path / "out"
    _run(loco, out, limit=2, k=4)
    with pytest.raises(AuditError, match="other references for 'toy_box'"):
        _run(loco, out, k=2)
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - Exactly one square.\n")
    with pytest.raises(AuditError, match="other rules for 'toy_box'.*another --out"):
        _run(loco, out, rules=rules)
    assert len(read_predictions(out / "predictions.jsonl")) == 2  # nothing was scored or lost
    assert _run(loco, out, k=4).scored_now == 6  # the same setup resumes


def test_a_category_filtered_run_keeps_the_other_categories_recorded(tmp_path):
    make_loco(tmp_path / "data", "toy_box", n_good=2, n_logical=1, n_structural=1)
    make_loco(tmp_path / "data", "toy_tray", n_good=2, n_logical=1, n_structural=1)
    _run(tmp_path / "data", tmp_path / "out", category="toy_box")
    _run(tmp_path / "data", tmp_path / "out", category="toy_tray")
    recorded = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert set(recorded["categories"]) == {"toy_box", "toy_tray"}


def test_files_sharing_a_stem_are_both_scored(loco, tmp_path):
    good = loco / "test" / "good"
    Image.open(good / "000.png").save(good / "000.jpg")
    out = tmp_path / "out"
    result = _run(loco, out)
    ids = [r.image_id for r in read_predictions(out / "predictions.jsonl")]
    assert {"toy_box/good/000.png", "toy_box/good/000.jpg", "toy_box/good/001"} <= set(ids)
    assert len(ids) == len(set(ids)) == result.metrics.n_images == 9
    assert _run(loco, out).scored_now == 0  # and a resume skips both


def test_one_bad_image_is_recorded_and_skipped(loco, tmp_path):
    (loco / "test" / "good" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    result = _run(loco, out)
    records = {r.image_id: r for r in read_predictions(out / "predictions.jsonl")}
    bad = records["toy_box/good/001"]
    assert bad.error and "ImageInputError" in bad.error and bad.score is None
    assert result.errors == 1 and result.metrics.categories["toy_box"].n_errors == 1
    assert sum(1 for r in records.values() if r.error is None) == 7
    assert "ImageInputError" in (out / "report.html").read_text()


def test_perception_crash_is_recorded(loco, tmp_path):
    result = _run(loco, tmp_path / "out", agent_factory=lambda: FakeAgent(fail_on="structural_anomalies/000"))
    records = read_predictions(tmp_path / "out" / "predictions.jsonl")
    crashed = [r for r in records if r.error]
    assert len(crashed) == 1 and "RuntimeError: perception crashed" in crashed[0].error
    assert result.metrics.n_images == 7


def test_dataset_root_with_two_categories_and_category_filter(tmp_path):
    make_loco(tmp_path / "data", "toy_box", n_good=2, n_logical=1, n_structural=1)
    make_loco(tmp_path / "data", "toy_tray", n_good=2, n_logical=1, n_structural=1)
    both = _run(tmp_path / "data", tmp_path / "both")
    assert set(both.metrics.categories) == {"toy_box", "toy_tray"}
    assert both.metrics.mean["auroc_logical"] == 1.0
    one = _run(tmp_path / "data", tmp_path / "one", category="toy_tray")
    assert set(one.metrics.categories) == {"toy_tray"}
    with pytest.raises(AuditError, match="No category 'nope'"):
        _run(tmp_path / "data", tmp_path / "x", category="nope")


def test_not_loco_layout_is_a_clear_error(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    with pytest.raises(AuditError, match="not in MVTec LOCO layout"):
        _run(folder, tmp_path / "out")
    with pytest.raises(AuditError, match="does not exist"):
        _run(tmp_path / "missing", tmp_path / "out")


def test_empty_test_split_is_a_clear_error(tmp_path):
    cat = make_loco(tmp_path / "data", n_good=0, n_logical=0, n_structural=0)
    assert cat.is_dir()
    with pytest.raises(AuditError, match="has an empty test split: nothing to score"):
        _run(cat, tmp_path / "out")


def test_writer_fsyncs_each_line(tmp_path, monkeypatch):
    import os

    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    from agent.audit import PredictionRecord

    writer = PredictionWriter(tmp_path / "p.jsonl")
    writer.write(PredictionRecord(image_id="a", category="c", path="a.png"))
    writer.write(PredictionRecord(image_id="b", category="c", path="b.png"))
    writer.close()
    assert len(synced) == 2 and len(read_predictions(tmp_path / "p.jsonl")) == 2


def test_two_worker_processes_give_the_same_predictions(loco, tmp_path):
    serial = _run(loco, tmp_path / "serial")
    parallel = _run(loco, tmp_path / "parallel", workers=2)
    a = {r.image_id: r.score for r in read_predictions(tmp_path / "serial" / "predictions.jsonl")}
    b = {r.image_id: r.score for r in read_predictions(tmp_path / "parallel" / "predictions.jsonl")}
    assert a == b and parallel.scored_now == serial.scored_now == 8


def test_workers_score_with_the_context_the_parent_prepared(loco, tmp_path):
    result = _run(loco, tmp_path / "out", workers=2, agent_factory=make_parent_only_prepare_agent)
    assert result.scored_now == 8 and result.errors == 0


def test_auto_workers_only_parallelises_big_batches(monkeypatch):
    import os

    from agent.audit import auto_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert auto_workers(8) == 1
    assert auto_workers(100) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert auto_workers(1000) == 4


def test_overlay_of_a_very_large_image_is_drawn_in_the_frame_the_agent_saw():
    import numpy as np

    from agent.overlay import render_overlay
    from agent.schema import Finding, Region, Verdict

    # 5000 px wide: the agent analysed it at 4096 px, so its boxes are in that frame
    big = Image.new("RGB", (5000, 100), (0, 0, 0))
    box = (4000, 20, 4080, 60)
    finding = Finding(rule_id="r1", rule_text="One part.", passed=False, evidence=[Region(bbox=box)])
    verdict = Verdict(score=0.9, is_anomalous=True, threshold=0.5, findings=[finding], explanation="r1 FAILED")
    out = np.asarray(render_overlay(big, verdict))
    assert out.shape[:2] == (82, 4096)
    assert tuple(out[40, box[0]]) == (230, 25, 25)  # the box's left edge, where the agent found it
