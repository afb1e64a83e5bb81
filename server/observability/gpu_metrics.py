"""Triton's GPU families (``nv_gpu_*``, ``nv_energy_consumption``), read through NVML when ``/metrics`` is
scraped.

NVML comes with the ``nvidia-ml-py`` package (module ``pynvml``, in the ``gpu`` extra) and the NVIDIA driver.
Without either, or with no GPU, :func:`open_gpus` answers None and the families are absent: a CPU-only server
shows no GPU families, never an error. Triton reads the same fields through DCGM; each family is labelled
``gpu_uuid`` with the device's UUID (``GPU-...``), as Triton's are.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from .triton_metrics import Family

log = logging.getLogger(__name__)


@dataclass
class _Device:
    handle: Any
    uuid: str
    energy_at_start_mj: int | None  # None: the device does not report its energy (before Volta)


class NvmlGpus:
    """The GPUs this process may use (``CUDA_VISIBLE_DEVICES``), read through the NVML module ``nvml``
    (``pynvml``, or a stand-in in tests) which :func:`open_gpus` has initialised."""

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self._nvml = nvml
        # Triton's energy counter starts at 0 when the server does: NVML's counts from the driver's start.
        self._devices = [_Device(h, _text(nvml.nvmlDeviceGetUUID(h)),
                                 self._read(nvml.nvmlDeviceGetTotalEnergyConsumption, h)) for h in handles]

    def __len__(self) -> int:
        return len(self._devices)

    def families(self) -> list[Family]:
        """Triton's GPU families now. A field a device cannot report (NVML answers an error) is left out for
        that device; Triton writes 0 there."""
        utilization = Family("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "gauge")
        total = Family("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "gauge")
        used = Family("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "gauge")
        power = Family("nv_gpu_power_usage", "GPU power usage in watts", "gauge")
        limit = Family("nv_gpu_power_limit", "GPU power management limit in watts", "gauge")
        energy = Family("nv_energy_consumption", "GPU energy consumption in joules since the Triton Server started",
                        "counter")
        nvml = self._nvml
        for d in self._devices:
            labels = {"gpu_uuid": d.uuid}
            rates = self._read(nvml.nvmlDeviceGetUtilizationRates, d.handle)
            if rates is not None:
                utilization.add(labels, rates.gpu / 100)  # NVML: percent
            memory = self._read(nvml.nvmlDeviceGetMemoryInfo, d.handle)
            if memory is not None:
                total.add(labels, memory.total)
                used.add(labels, memory.used)
            milliwatts = self._read(nvml.nvmlDeviceGetPowerUsage, d.handle)
            if milliwatts is not None:
                power.add(labels, milliwatts / 1000)
            milliwatts = self._read(nvml.nvmlDeviceGetPowerManagementLimit, d.handle)
            if milliwatts is not None:
                limit.add(labels, milliwatts / 1000)
            if d.energy_at_start_mj is not None:
                millijoules = self._read(nvml.nvmlDeviceGetTotalEnergyConsumption, d.handle)
                if millijoules is not None:
                    energy.add(labels, (millijoules - d.energy_at_start_mj) / 1000)
        return [utilization, total, used, power, limit, energy]

    def close(self) -> None:
        self._read(self._nvml.nvmlShutdown)

    def _read(self, call: Any, *args: Any) -> Any:
        """``call(*args)``, or None when NVML answers an error (a field the device does not support)."""
        try:
            return call(*args)
        except self._nvml.NVMLError as e:
            log.debug("NVML %s: %s", getattr(call, "__name__", call), e)
            return None


def open_gpus(nvml: Any = None) -> NvmlGpus | None:
    """The GPUs to report, through ``nvml`` (default: the ``pynvml`` module); None when it is not installed,
    NVML cannot start (no driver) or no GPU is visible."""
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            return None
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError, or a library that cannot be loaded: no GPU metrics, not an error
        log.debug("no GPU metrics: NVML did not start (%s)", e)
        return None
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        visible = [h for i, h in enumerate(handles) if _visible(i, _text(nvml.nvmlDeviceGetUUID(h)))]
        gpus = NvmlGpus(nvml, visible) if visible else None
    except nvml.NVMLError as e:
        log.warning("no GPU metrics: NVML could not list the GPUs (%s)", e)
        gpus = None
    if gpus is None:
        nvml.nvmlShutdown()
    return gpus


def _visible(index: int, uuid: str) -> bool:
    """Whether CUDA lets this process use the device (``CUDA_VISIBLE_DEVICES`` names it by index or by a
    prefix of its UUID; unset: every device)."""
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is None:
        return True
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    return any(n == str(index) or (n.startswith("GPU-") and uuid.startswith(n)) for n in names)


def _text(value: Any) -> str:
    """NVML strings come as bytes from older nvidia-ml-py releases, as str from newer ones."""
    return value.decode() if isinstance(value, bytes) else str(value)
