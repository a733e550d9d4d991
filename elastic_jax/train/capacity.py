"""Refuse a training run that cannot fit this machine, from the parameter accounting alone: one line before anything
is compiled or allocated (`elastic-jax plan` answers the same question for a cluster, by compiling)."""

from __future__ import annotations

import os
from typing import Any

import jax

from elastic_jax.config import ConfigError
from elastic_jax.elastic.accounting import count_params, format_count

GiB = 1024**3
BYTES_PER_PARAM = {"pretrain": 16, "elastic": 20}  # fp32 weights + grads + 2 Adam moments (+ the fp32 teacher)


def local_capacity() -> tuple[int, int, str]:
    """(bytes one device can hold, number of devices sharing the work, what): HBM per accelerator, host RAM on CPU
    (fake CPU devices share it, so the whole run must fit in it)."""
    devices = jax.devices()
    stats = devices[0].memory_stats() if devices[0].platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), len(devices), f"{devices[0].device_kind} memory"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram, 1, "host RAM"


def check_fits_locally(model: Any, verb: str) -> None:
    """ConfigError when the training state alone (fp32 weights, grads, Adam moments, and the teacher for elastify)
    cannot fit this machine's devices, from the parameter accounting: before anything is compiled or allocated."""
    total, _ = count_params(model)
    program = "elastic" if verb == "elastify" else "pretrain"
    need = BYTES_PER_PARAM[program] * total
    capacity, devices, what = local_capacity()
    if need / devices > capacity:
        raise ConfigError(f"{verb}: {format_count(total)} parameters need at least {need / GiB:.0f} GiB of training "
                          f"state ({BYTES_PER_PARAM[program]} bytes each: fp32 weights, gradients, Adam"
                          f"{', teacher' if program == 'elastic' else ''}), {need / devices / GiB:.0f} GiB on each of "
                          f"{devices} device(s), more than the {capacity / GiB:.0f} GiB of {what}; see "
                          "`elastic-jax plan` for a cluster that fits", section="model")
