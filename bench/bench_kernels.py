r"""asv benchmarks of the Triton kernels against their torch references.

* :class:`CGUpdate`: one CG iteration's update (:func:`emdm.kernels.cg.cg_update`) after
  :math:`C p`, fp32, per-sample dots, for :math:`B \in \{64, 256\}` and
  :math:`D = 3 \cdot 32^2` (CIFAR) or :math:`320^2` (MRI); `track_floor_gbps` reports the
  floor traffic over the time.
* :class:`MRI`: the centred orthonormal FFT operator's forward plus adjoint
  (:mod:`emdm.kernels.mri`) at :math:`B = 64`, :math:`320 \times 320`.

The `provider` parameter is `ref` (the torch reference, what runs on CPU) or `triton`; the
Triton cases need a CUDA device and skip themselves elsewhere. Everything timed goes through
`emdm` (the kernels as `emdm.kernels`); nothing is re-implemented here.

    .venv/bin/asv run --python=same --quick --show-stderr --bench bench_kernels
"""

import torch

from emdm.kernels.cg import cg_update
from emdm.kernels.mri import mri_adjoint, mri_forward

from .common import Bounded, cg_bytes, cg_state, median_ms, mri_bytes, mri_problem, synchronizer

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _skip_triton_on_cpu(provider: str) -> None:
    if provider == "triton" and DEVICE.type != "cuda":
        raise NotImplementedError("the Triton provider is benchmarked on CUDA only")  # asv: skip


class CGUpdate(Bounded):
    params = (["ref", "triton"], [64, 256], [3 * 32 * 32, 320 * 320])
    param_names = ("provider", "B", "D")

    def setup(self, provider: str, B: int, D: int):
        _skip_triton_on_cpu(provider)
        self.state = cg_state(B, D, DEVICE)
        self.sync = synchronizer(DEVICE)
        self.time_update(provider, B, D)  # warm-up (and Triton's compilation)

    def time_update(self, provider: str, B: int, D: int):
        cg_update(*self.state, provider=provider)
        self.sync()

    def track_floor_gbps(self, provider: str, B: int, D: int):
        ms, _ = median_ms(lambda: cg_update(*self.state, provider=provider), DEVICE, 20)
        return cg_bytes(B, D) / ms / 1e6

    track_floor_gbps.unit = "GB/s"


class MRI(Bounded):
    params = (["ref", "triton"], [64], [320])
    param_names = ("provider", "B", "N")

    def setup(self, provider: str, B: int, N: int):
        _skip_triton_on_cpu(provider)
        self.x, self.y, self.mask = mri_problem(B, N, N, DEVICE)
        self.sync = synchronizer(DEVICE)
        self.time_forward_adjoint(provider, B, N)  # warm-up

    def _call(self, provider: str):
        mri_forward(self.x, self.mask, provider=provider)
        mri_adjoint(self.y, self.mask, provider=provider)

    def time_forward_adjoint(self, provider: str, B: int, N: int):
        self._call(provider)
        self.sync()

    def track_floor_gbps(self, provider: str, B: int, N: int):
        ms, _ = median_ms(lambda: self._call(provider), DEVICE, 10)
        return mri_bytes(B, N, N) / ms / 1e6

    track_floor_gbps.unit = "GB/s"
