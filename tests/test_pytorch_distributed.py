"""moopt.pytorch with distributed=True: two gloo processes, each with half of the batch, give
the weights, Gram and .grad of one process with the whole batch (float64, to 1e-10)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_pytorch_glue import BALANCERS, TwoHeads, _data

from moopt.pytorch import balanced_backward, update_balancer

CASES = [
    (name, mode) for name in sorted(BALANCERS) for mode in ("sequential", "batched", "features")
]


def _run_cases(x: torch.Tensor, distributed: bool) -> list[dict]:
    """Every case on ``x``: weights, Gram, .grad and (coarse-to-fine) the updated state."""
    results = []
    for name, mode in CASES:
        model = TwoHeads()
        balancer = BALANCERS[name]()
        losses, features = model.losses(x)
        step = balanced_backward(
            losses,
            balancer,
            model.parameters(),
            features=features if mode == "features" else None,
            gram_mode="batched" if mode == "batched" else "sequential",
            distributed=distributed,
        )
        update_balancer(balancer, lambda model=model: model.losses(x)[0], distributed=distributed)
        results.append(
            {
                "weights": step.weights,
                "gram": step.gram,
                "losses": step.losses,
                "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
                "state": balancer.state_dict(),
            }
        )
    return results


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x = _data()
        half = x.shape[0] // world
        torch.save(_run_cases(x[rank * half : (rank + 1) * half], True), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{n}-{m}" for n, m in CASES])
def test_two_processes_match_one(two_process_results, index):
    """Same losses, Gram, weights, .grad and balancer state as one process with all samples."""
    expected = _run_cases(_data(), distributed=False)[index]
    for rank, results in enumerate(two_process_results):
        got = results[index]
        np.testing.assert_allclose(got["losses"], expected["losses"], rtol=1e-12)
        np.testing.assert_allclose(got["weights"], expected["weights"], rtol=1e-9, atol=1e-12)
        if expected["gram"] is None:
            assert got["gram"] is None
        else:
            np.testing.assert_allclose(got["gram"], expected["gram"], rtol=1e-9, atol=1e-14)
        for j, (g, want) in enumerate(zip(got["grads"], expected["grads"], strict=True)):
            if want is None:
                assert g is None, (rank, j)
            else:
                torch.testing.assert_close(g, want, rtol=0, atol=1e-10, msg=f"rank {rank} p{j}")
    left, right = (r[index]["state"] for r in two_process_results)
    assert repr(left) == repr(right)  # identical on both ranks, bit for bit


def test_distributed_needs_an_initialised_process_group():
    model = TwoHeads()
    losses, _ = model.losses(_data())
    with pytest.raises(ValueError, match=r"distributed=True needs torch\.distributed"):
        balanced_backward(losses, BALANCERS["eq-qp"](), model.parameters(), distributed=True)


if os.environ.get("MOOPT_SKIP_DISTRIBUTED"):  # pragma: no cover - a local escape hatch
    pytestmark = pytest.mark.skip("MOOPT_SKIP_DISTRIBUTED is set")
