"""Where a run computes: device names and the CUDA settings a run on a GPU uses."""

import pytest
import torch

from moopt_lic.devices import resolve_device, use_deterministic_cuda
from moopt_lic.errors import InputError


@pytest.fixture
def restored_backend_flags():
    """Put the process-global flags that ``use_deterministic_cuda`` sets back afterwards."""
    saved = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    ) = saved[:4]
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def test_cuda_runs_are_deterministic_and_full_float32(restored_backend_flags) -> None:
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
    use_deterministic_cuda()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32
    assert torch.are_deterministic_algorithms_enabled()


def test_device_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(InputError, match="no CUDA device is available"):
        resolve_device("cuda")
