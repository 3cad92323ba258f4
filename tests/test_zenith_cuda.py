"""Zenith on a GPU: no sync under CUDA's own sync detector, AMP, moving state between devices.

Skipped where no CUDA device is visible (CI); run on a GPU machine.
"""
import pytest
import torch

from zenith_det import Zenith

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _model(device, dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8)).to(device, dtype)


def _steps(model, opt, n, seed, bad_step=None, forbid_sync=False):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    for t in range(n):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen, device="cuda", dtype=p.dtype) / (1 + t % 4)
        if t == bad_step:
            next(model.parameters()).grad[0, 0] = float("inf")  # itself a host->device write
        torch.cuda.synchronize()
        if forbid_sync:
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_step_never_syncs_with_the_host(dtype):
    model = _model("cuda", dtype)
    opt = Zenith(model.parameters(), lr=0.1, weight_decay=1e-4, nesterov=True, window=4)
    _steps(model, opt, 1, seed=0)  # the first step allocates state and captures the graph
    _steps(model, opt, 10, seed=1, bad_step=5, forbid_sync=True)
    assert opt.skipped_steps().item() == 1
    assert 0 < opt.multiplier().item() <= 1


def test_grad_scaler_path_is_sync_free_and_unscaled():
    model = _model("cuda")
    opt = Zenith(model.parameters(), lr=0.1, window=4)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    x = torch.randn(32, 64, device="cuda")
    for _ in range(3):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        expected = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in model.parameters()])) / scaler.get_scale()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            scaler.step(opt)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        scaler.update()
        assert opt.last_grad_norm().item() == pytest.approx(expected.item(), rel=1e-4)


def test_state_moves_between_devices_and_resumes_bit_identically():
    model = _model("cuda")
    opt = Zenith(model.parameters(), lr=0.05, window=4)
    _steps(model, opt, 6, seed=0)
    saved_model = {k: v.cpu() for k, v in model.state_dict().items()}
    saved_opt = _roundtrip(opt.state_dict())  # state_dict() holds live buffers: serialise now
    _steps(model, opt, 5, seed=1)

    # Via the CPU: load CUDA state into a CPU optimizer, then back onto the GPU.
    cpu_model = _model("cpu")
    cpu_model.load_state_dict(saved_model)
    cpu_opt = Zenith(cpu_model.parameters(), lr=0.05, window=4)
    cpu_opt.load_state_dict(torch.load(saved_opt, map_location="cpu", weights_only=True))
    assert cpu_opt.zenith().device.type == "cpu"
    gpu_model = _model("cuda")
    gpu_model.load_state_dict(saved_model)
    gpu_opt = Zenith(gpu_model.parameters(), lr=0.05, window=4)
    gpu_opt.load_state_dict(cpu_opt.state_dict())
    assert gpu_opt.zenith().device.type == "cuda"
    _steps(gpu_model, gpu_opt, 5, seed=1)
    for a, b in zip(model.parameters(), gpu_model.parameters()):
        assert torch.equal(a, b)


def _roundtrip(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_cuda_graph_history_equals_eager_kernels():
    from zenith_det.solver import NormHistory

    graphed, eager = NormHistory(4, "cuda"), NormHistory(4, "cuda")
    eager._graph = False  # never capture
    for g in [3.0, 1.0, float("inf"), 2.0, float("nan"), 5.0, 0.5, 0.1, 7.0, 0.0]:
        a = graphed.update(torch.tensor(g, device="cuda"))
        b = eager.update(torch.tensor(g, device="cuda"))
        assert torch.equal(a, b), g
    assert isinstance(graphed._graph, torch.cuda.CUDAGraph)
    for key in NormHistory._STATE:
        assert torch.equal(getattr(graphed, key), getattr(eager, key)), key
    # A load writes in place, so the captured graph keeps working on the loaded state.
    graphed.load_state_dict(eager.state_dict())
    assert torch.equal(graphed.update(torch.tensor(2.0, device="cuda")), eager.update(torch.tensor(2.0, device="cuda")))
