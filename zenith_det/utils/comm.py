"""torch.distributed helpers that also work, as no-ops, in a single process."""
import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def all_gather(obj) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather(obj, dst: int = 0) -> list:
    """Every rank's `obj` on rank `dst` (in rank order); an empty list elsewhere."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out if get_rank() == dst else []


def any_rank(flag: bool, device=None) -> bool:
    """True on every rank if `flag` is True on any: hooks use it so all ranks stop,
    evaluate or checkpoint at the same iteration."""
    if get_world_size() == 1:
        return flag
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
