"""A plan (plan.py's result) as the table `elastic-jax plan` prints."""

from __future__ import annotations

from typing import Any

from elastic_jax.plan_targets import GiB


def _execution_name(r: dict[str, Any]) -> str:
    parts = ([f"remat {r['remat']}"] if r.get("remat", "none") != "none" else []) + \
        (["layer scan"] if r.get("scan_layers") else []) + \
        ([f"{r['micro_batches']} micro-batches"] if r.get("micro_batches", 1) > 1 else [])
    return f" ({', '.join(parts)})" if parts else ""


def _batch_note(r: dict[str, Any]) -> str:
    """The batch the mesh took, when it is not the configured one."""
    if "configured_global_batch" not in r:
        return ""
    return (f"; global batch {r['global_batch']} compiled instead of the configured {r['configured_global_batch']} "
            f"(this mesh takes multiples of {r['global_batch_multiple']})")


def _change_lines(change: dict[str, Any], hbm: int) -> list[str]:
    """The smallest change that would fit, and every alternative's bytes per device."""
    head = (f"  smallest change that fits: {change['smallest']}" if change["smallest"] else
            f"  no single change below fits: {change['note']}")
    rows = [f"    {o['change']:60s}{o['total_bytes'] / GiB:8.2f} GiB  {'fits' if o['fits'] else 'does not fit'}"
            for o in change["options"]]
    return [head, f"    (per device, of {hbm / GiB:.1f} GiB; the stored state exact from the shardings, the rest as "
            "compiled)", *rows]


def format_plan(p: dict[str, Any]) -> str:
    """The plan as a human-readable table."""
    gib = lambda b: f"{b / GiB:8.2f} GiB"  # noqa: E731
    lines = [f"plan: {p['target']} ({p['platform']}, {p['device_count']} devices"
             f"{', topology ' + p['topology'] if p['topology'] else ''}, {p['hbm_bytes_per_device'] / GiB:.1f} GiB "
             f"each), mode {p['mode']}, budgets {p['budgets']}",
             f"model: {p['model']['total_params']:,} parameters ({p['model']['active_params']:,} active)",
             f"figures: {p['figures']}", f"rematerialisation: {p['rematerialisation']}"]
    for program, entry in p["programs"].items():
        teacher = ", teacher" if program == "elastic" else ""
        lines.append(f"\n[{program}] accounting estimate (weights, grads, Adam{teacher} in fp32, ideally sharded): "
                     f"{gib(entry['accounting_estimate_bytes_per_device'])} per device")
        for r in entry["tried"]:
            if "error" in r:
                lines.append(f"  mesh {r['mesh_name']}: not possible: {r['error']}")
                continue
            lines.append(f"  mesh {r['mesh_name']}{_execution_name(r)}: total {gib(r['total_bytes'])} per device, "
                         f"{r['flops_per_step'] / 1e12:.3f} TFLOP per device per step, compiled in "
                         f"{r['compile_seconds']} s; {r['advice']}{_batch_note(r)}")
        best = entry["best"]
        if best:
            lines.append(f"  best: mesh {best['mesh_name']}{_execution_name(best)} (global batch "
                         f"{best['global_batch']} x {best['seq_len']}{_batch_note(best)}), per device:")
            lines += [f"    {k.replace('_', ' '):30s}{gib(v)}" for k, v in best["bytes"].items()]
            lines.append(f"    {'total':30s}{gib(best['total_bytes'])}  fits: {best['fits']}")
        if entry.get("smallest_change"):
            lines += _change_lines(entry["smallest_change"], p["hbm_bytes_per_device"])
    host = p.get("host_memory_per_process")
    if host:
        lines.append(f"\nhost memory per process ({host['processes']} process(es), {host['devices_per_process']} "
                     f"devices each): import-hf {gib(host['import_hf'])} (one tensor at a time); teacher + student "
                     f"restored into their shardings: reads {gib(host['restore_sharded'] or 0)}; the whole fp32 parent "
                     f"{gib(host['whole_parent'])} (elastify from a Hugging Face directory; import-hf it first)")
    lines.append(f"\nfits: {p['fits']}")
    return "\n".join(lines)
