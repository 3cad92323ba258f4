"""What the race measures inside a run (zenith_det/race/probes.py: host syncs, optimizer
state bytes) and tools/plot_metrics.py on our and detectron2's metrics.json."""
import json
import os

import pytest
import torch

from conftest import load_tool
from zenith_det import Zenith
from zenith_det.race import probes
from zenith_det.plots.metrics_json import load_metrics, wall_hours


plot_metrics = load_tool("plot_metrics")


def _write_lines(path, records, extra_text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(extra_text)


def test_load_metrics_merges_resumed_lines_and_skips_a_torn_one(tmp_path):
    path = str(tmp_path / "metrics.json")
    _write_lines(path, [{"iteration": 1, "total_loss": 2.0}, {"iteration": 3, "total_loss": 1.0},
                        {"iteration": 3, "bbox/AP": 10.0}, {"iteration": 1, "total_loss": 1.5}],
                 extra_text='{"iteration": 5, "tot')
    recs = load_metrics(str(tmp_path))
    assert [r["iteration"] for r in recs] == [1, 3]
    assert recs[0]["total_loss"] == 1.5 and recs[1] == {"iteration": 3, "total_loss": 1.0, "bbox/AP": 10.0}


@pytest.mark.slow
def test_plot_metrics_on_a_detectron2_metrics_json(tmp_path):
    pytest.importorskip("matplotlib")
    d2 = tmp_path / "d2_run"
    recs = []
    for it in range(19, 200, 20):
        recs.append({"iteration": it, "total_loss": 3.0 - it / 100, "lr": 0.02, "time": 0.5, "eta_seconds": 10.0,
                     "data_time": 0.01, "loss_cls": 0.5, "rank_data_time": 0.01})
    recs.append({"iteration": 199, "bbox/AP": 20.0, "bbox/AP50": 40.0, "segm/AP": 18.0})
    _write_lines(str(d2 / "metrics.json"), recs)
    hours, exact = wall_hours(load_metrics(str(d2)))
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
    counter = probes.StepSyncCounter(zen).start()
    for _ in range(3):
        zen.step()
    counter.stop()
    assert counter.counts == [0, 0, 0]

    syncing = SyncingSGD(_model_and_grads().parameters(), lr=0.1)
    counter = probes.StepSyncCounter(syncing).start()
    for _ in range(2):
        syncing.step()
    counter.stop()
    assert counter.counts == [2, 2]
    syncing.step()  # hooks removed: not counted, and Tensor methods restored
    assert counter.counts == [2, 2] and torch.Tensor.item.__name__ == "item"

    with probes.count_host_syncs() as c:
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
    assert probes.optimizer_state_bytes(sgd) / n == 4.0
    # Zenith: the momentum buffer, plus a window of W norms and a few scalars for the whole model
    assert probes.optimizer_state_bytes(zen) / n == pytest.approx(4.0, abs=0.1)
    assert probes.optimizer_state_bytes(zen) > probes.optimizer_state_bytes(sgd)
    assert probes.optimizer_state_bytes(adam) / n == pytest.approx(8.0, abs=0.05)  # + its step counters




def test_figures_without_matplotlib_are_one_line_naming_the_extra(monkeypatch, tmp_path):
    import builtins

    from zenith_det.plots.figures import plot_runs
    from zenith_det.errors import UserError

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(UserError, match=r"matplotlib.*pip install -e \".\[plots\]\"") as e:
        plot_runs({"run": []}, str(tmp_path))
    assert "\n" not in str(e.value)
