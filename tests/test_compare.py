"""tools/compare.py and tools/plot_metrics.py on small fake runs (no training, except one
short in-process run of the compare probe): the table, the figures, sync counts, state bytes."""
import argparse
import importlib.util
import json
import os

import pytest
import torch

from zenith_det import Zenith

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool(name):
    path = os.path.join(REPO, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _load_tool("compare")
plot_metrics = _load_tool("plot_metrics")


def _write_lines(path, records, extra_text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(extra_text)


def _fake_run(out, name, ap_scale, optimizer="ZENITH", zenith=True, stats=True):
    """A metrics.json as our trainer + the compare probe write it, and compare_stats.json."""
    recs = []
    for it in range(9, 100, 10):
        r = {"iteration": it, "total_loss": 2.0 / (1 + it / 20), "lr": 0.02, "time": 0.4, "grad_norm": 3.0 + it / 100,
             "wall_seconds": 0.4 * (it + 1), "lr_effective": 0.02 / (1 + it / 50)}
        if zenith:
            r["zenith/multiplier"] = 1.0 / (1 + it / 50)
            r["zenith/grad_norm"] = r["grad_norm"]
        recs.append(r)
    for it, ap in ((49, 30.0), (99, 50.0)):
        recs.append({"iteration": it, "bbox/AP": ap * ap_scale, "segm/AP": ap * ap_scale + 2, "eval_seconds": 2.0,
                     "wall_seconds": 0.4 * (it + 1) + 2.0})
    recs.sort(key=lambda r: r["iteration"])
    _write_lines(os.path.join(out, name, "metrics.json"), recs)
    if stats:
        with open(os.path.join(out, name, compare.STATS), "w") as f:
            json.dump({"status": "ok", "optimizer": optimizer, "schedule": "WarmupConstantLR", "base_lr": 0.02,
                       "iterations": 100, "wall_seconds": 44.0, "step_seconds_median": 0.4,
                       "peak_memory_bytes": 500 * 2**20, "peak_memory_kind": "max RSS (CPU)",
                       "state_bytes_per_param": 4.0, "syncs_per_step": [0, 0, 0], "threads": 2, "device": "cpu",
                       "sync_steps_from": 10}, f)


def test_load_metrics_merges_resumed_lines_and_skips_a_torn_one(tmp_path):
    path = str(tmp_path / "metrics.json")
    _write_lines(path, [{"iteration": 1, "total_loss": 2.0}, {"iteration": 3, "total_loss": 1.0},
                        {"iteration": 3, "bbox/AP": 10.0}, {"iteration": 1, "total_loss": 1.5}],
                 extra_text='{"iteration": 5, "tot')
    recs = plot_metrics.load_metrics(str(tmp_path))
    assert [r["iteration"] for r in recs] == [1, 3]
    assert recs[0]["total_loss"] == 1.5 and recs[1] == {"iteration": 3, "total_loss": 1.0, "bbox/AP": 10.0}


def test_table_and_report_from_fake_runs(tmp_path):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "runs")
    variants = [compare.preset_variant("ZENITH"), compare.preset_variant("DOG"),
                compare.preset_variant("ZENITH", "eta0", "zenith_lr0.08", "ZENITH eta0 0.08"),
                compare.preset_variant("COCOB")]
    variants[0].also = ("eta0",)  # the reference joins the eta0 figures
    _fake_run(out, "zenith", 1.0)
    _fake_run(out, "dog", 0.5, optimizer="DOG", zenith=False)
    _fake_run(out, "zenith_lr0.08", 0.9)
    os.makedirs(os.path.join(out, "cocob"))
    with open(os.path.join(out, "cocob", compare.FAILED), "w") as f:
        json.dump({"status": "diverged", "optimizer": "COCOB", "iterations": 12}, f)

    runs = compare.collect(out, variants)
    assert list(runs) == ["zenith", "dog", "zenith_lr0.08", "cocob"]
    table = compare.results_table(runs)
    lines = table.splitlines()
    assert "box AP final" in lines[0] and "mask AP best" in lines[0] and "keypoint" not in lines[0]
    zen = next(line for line in lines if line.startswith("| ZENITH |"))
    cells = [c.strip() for c in zen.strip("|").split("|")]
    assert cells[5:9] == ["50.0", "50.0", "52.0", "52.0"]  # final = best here
    assert cells[-5:] == ["0.7", "0.400", "500", "4.00", "0"]
    assert "(diverged)" in table

    report = str(tmp_path / "docs" / "RESULTS.md")
    args = argparse.Namespace(
        report=report, figures=None, config=compare.PAPER_CONFIG, opts=[], budget_hours=0.035, eval_minutes=0.6,
        notes=None, title="")
    compare.write_report(args, variants, runs, "python tools/compare.py --suite paper")
    text = open(report).read()
    assert "python tools/compare.py --suite paper" in text and table in text
    assert "ZENITH ranks 1 of 2 on final box AP" in text
    for name in ("map_vs_time.png", "loss.png", "lr.png", "grad_norm.png", "eta0_map_vs_time.png"):
        path = tmp_path / "docs" / "figures" / name
        assert path.stat().st_size > 5000, name
        assert f"](figures/{name})" in text


def test_plot_metrics_on_a_detectron2_metrics_json(tmp_path):
    pytest.importorskip("matplotlib")
    d2 = tmp_path / "d2_run"
    recs = []
    for it in range(19, 200, 20):
        recs.append({"iteration": it, "total_loss": 3.0 - it / 100, "lr": 0.02, "time": 0.5, "eta_seconds": 10.0,
                     "data_time": 0.01, "loss_cls": 0.5, "rank_data_time": 0.01})
    recs.append({"iteration": 199, "bbox/AP": 20.0, "bbox/AP50": 40.0, "segm/AP": 18.0})
    _write_lines(str(d2 / "metrics.json"), recs)
    hours, exact = plot_metrics.wall_hours(plot_metrics.load_metrics(str(d2)))
    assert not exact and hours[199] == pytest.approx(200 * 0.5 / 3600)
    out = tmp_path / "figs"
    assert plot_metrics.main([str(d2), str(d2 / "metrics.json"), "--labels", "d2 a", "d2 b", "--out", str(out)]) == 0
    for name in plot_metrics.FIGURES:
        assert (out / name).stat().st_size > 5000


def test_plot_metrics_cli_errors(tmp_path, capsys):
    assert plot_metrics.main([str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        plot_metrics.main([str(tmp_path), str(tmp_path), "--labels", "one"])


def _model_and_grads():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    model(torch.randn(8, 16)).square().mean().backward()
    return model


class SyncingSGD(torch.optim.SGD):
    """An optimizer that reads a value on the host in every step, as many automatic ones do."""

    def step(self, closure=None):
        norm = torch.stack([p.grad.norm() for g in self.param_groups for p in g["params"]]).norm()
        if norm > 0:  # __bool__: one sync
            self.last = norm.item()  # two
        return super().step(closure)


def test_sync_counting_zenith_none_and_a_syncing_optimizer():
    model = _model_and_grads()
    zen = Zenith(model.parameters(), lr=0.1, momentum=0.9, window=5)
    counter = compare.StepSyncCounter(zen).start()
    for _ in range(3):
        zen.step()
    counter.stop()
    assert counter.counts == [0, 0, 0]

    syncing = SyncingSGD(_model_and_grads().parameters(), lr=0.1)
    counter = compare.StepSyncCounter(syncing).start()
    for _ in range(2):
        syncing.step()
    counter.stop()
    assert counter.counts == [2, 2]
    syncing.step()  # hooks removed: not counted, and Tensor methods restored
    assert counter.counts == [2, 2] and torch.Tensor.item.__name__ == "item"

    with compare.count_host_syncs() as c:
        torch.ones(1).item()
        float(torch.ones(()))
        bool(torch.ones(()))
    assert c["count"] == 3


def test_state_bytes_per_parameter():
    model = _model_and_grads()
    n = sum(p.numel() for p in model.parameters())
    zen = Zenith(model.parameters(), lr=0.1, momentum=0.9, window=5)
    sgd = torch.optim.SGD(_model_and_grads().parameters(), lr=0.1, momentum=0.9)
    adam = torch.optim.AdamW(_model_and_grads().parameters(), lr=0.1)
    for opt in (zen, sgd, adam):
        opt.step()
    assert compare.optimizer_state_bytes(sgd) / n == 4.0
    # Zenith: the momentum buffer, plus a window of W norms and a few scalars for the whole model
    assert compare.optimizer_state_bytes(zen) / n == pytest.approx(4.0, abs=0.1)
    assert compare.optimizer_state_bytes(zen) > compare.optimizer_state_bytes(sgd)
    assert compare.optimizer_state_bytes(adam) / n == pytest.approx(8.0, abs=0.05)  # + its step counters


def test_sgd_schedule_is_fitted_to_the_reference_run():
    from zenith_det.config import load_config

    base = load_config(os.path.join(REPO, compare.PAPER_CONFIG), [])
    ms = compare.preset_variant("SGD_MULTISTEP")
    opts = compare.resolve_overrides(ms, base, "out", reference_iters=300)
    got = dict(zip(opts[::2], opts[1::2]))
    assert got["SOLVER.MAX_ITER"] == "285" and got["SOLVER.STEPS"] == "(190, 253)"
    assert got["SOLVER.OPTIMIZER"] == "SGD" and got["SOLVER.LR_SCHEDULER_NAME"] == "WarmupMultiStepLR"
    sf = dict(zip(*[iter(compare.resolve_overrides(compare.preset_variant("SCHEDULEFREE_SGD"), base, "out", None))] * 2))
    assert float(sf["SOLVER.BASE_LR"]) == pytest.approx(10 * base.SOLVER.BASE_LR)
    with pytest.raises(RuntimeError, match="reference"):
        compare.resolve_overrides(ms, base, "out", reference_iters=None)
    # every suite variant resolves and loads as a config
    for v in compare.paper_suite():
        load_config(os.path.join(REPO, compare.PAPER_CONFIG), compare.resolve_overrides(v, base, "out", 300))


def test_runner_skips_finished_and_failed_variants(tmp_path, monkeypatch):
    out = str(tmp_path / "runs")
    _fake_run(out, "zenith", 1.0)
    os.makedirs(os.path.join(out, "dog"))
    with open(os.path.join(out, "dog", compare.FAILED), "w") as f:
        json.dump({"status": "diverged"}, f)
    calls = []
    monkeypatch.setattr(compare, "run_process", lambda cmd, log: calls.append(cmd) or 1)
    args = argparse.Namespace(
        out=out, only=None, retry_failed=False, config=os.path.join(REPO, compare.PAPER_CONFIG))
    variants = [compare.preset_variant("ZENITH"), compare.preset_variant("DOG"), compare.preset_variant("SGD_COSINE")]
    compare.run_variants(args, variants, ["SOLVER.MAX_TIME_HOURS", "0.01"])
    assert len(calls) == 1  # only sgd_cosine; zenith is done, dog failed before
    cmd = calls[0]
    assert cmd[2:4] == ["--child", args.config] and "--resume" not in cmd
    opts = cmd[cmd.index("--") + 1:]
    got = dict(zip(opts[::2], opts[1::2]))
    assert got["SOLVER.MAX_ITER"] == "95" and got["OUTPUT_DIR"].endswith("sgd_cosine")
    # the (fake) process failed without a word: recorded, so a rerun skips it unless --retry-failed
    failed = json.load(open(os.path.join(out, "sgd_cosine", compare.FAILED)))
    assert failed["returncode"] == 1
    compare.run_variants(args, variants, ["SOLVER.MAX_TIME_HOURS", "0.01"])
    assert len(calls) == 1


def test_child_run_writes_stats_and_probe_metrics(tiny_cfg, datasets_root, tmp_path, monkeypatch):
    """One short real run through the compare runner (in this process)."""
    out = str(tmp_path / "child")
    opts = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.ZENITH.WINDOW", "5", "DATALOADER.NUM_WORKERS", "0",
            "DATASETS.TEST", "()", "LOG_PERIOD", "2", "OUTPUT_DIR", out]
    monkeypatch.setattr(compare, "SYNC_START", 2)
    assert compare.run_child(os.path.join(REPO, compare.PAPER_CONFIG), opts, resume=False) == 0
    stats = json.load(open(os.path.join(out, compare.STATS)))
    assert stats["iterations"] == 6 and stats["optimizer"] == "ZENITH"
    assert stats["syncs_per_step"] == [0, 0, 0, 0]  # ZENITH's step never syncs
    assert stats["state_bytes_per_param"] == pytest.approx(4.0, abs=0.05)
    assert stats["peak_memory_bytes"] > 0 and stats["step_seconds_median"] > 0
    recs = plot_metrics.load_metrics(out)
    assert any("wall_seconds" in r for r in recs) and any("lr_effective" in r for r in recs)
    assert any("grad_norm" in r for r in recs)
