"""`elastic-jax <verb>`: the command line. Every verb that takes --config accepts --config.a.b=value overrides."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from elastic_jax.cli_models import generate_any, importance_verb, load_any, load_hf

VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


def verb(name: str, help_text: str):
    """Register `fn(args, overrides) -> int` as a sub-command whose arguments `add_args` declares."""
    def wrap(add_args: Callable[[argparse.ArgumentParser], None]):
        VERBS[name] = (help_text, add_args)
        return add_args
    return wrap


def _config_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="config file or name in configs/ (tiny, small, ...)")


def _out_arg(p: argparse.ArgumentParser, what: str = "output directory") -> None:
    """--out and --overwrite: every verb that writes a directory refuses a non-empty one unless --overwrite."""
    p.add_argument("--out", required=True, help=f"{what} (must not exist or be empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it already holds a model (written aside first, swapped in when complete)")


@verb("params", "print total and active-per-token parameters of a config (shapes only)")
def _params_args(p):
    _config_arg(p)


@verb("init", "write a randomly initialised model checkpoint")
def _init_args(p):
    _config_arg(p)
    _out_arg(p, "checkpoint directory to write")
    p.add_argument("--seed", type=int, default=0)


@verb("import-hf", "import a Hugging Face NemotronH directory as an elastic_jax checkpoint")
def _import_args(p):
    p.add_argument("--hf", required=True, help="Hugging Face model directory (config.json + safetensors)")
    _out_arg(p, "checkpoint directory to write")


@verb("export-hf", "export a checkpoint as a Hugging Face NemotronH directory")
def _export_args(p):
    p.add_argument("--checkpoint", required=True, help="elastic_jax checkpoint directory")
    _out_arg(p, "Hugging Face directory to write")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--layout", default="nvidia", choices=["nvidia", "transformers"])
    p.add_argument("--budget", type=float, help="for an elastic checkpoint: the budget to export, in (0, 1]")
    p.add_argument("--quant", choices=["fp8", "nvfp4"],
                   help="with --budget: export in Model-Optimizer's quantised layout (vLLM / TensorRT-LLM load it)")


@verb("export-gguf", "export a checkpoint (one budget of an elastic one) as a GGUF file for llama.cpp")
def _export_gguf_args(p):
    p.add_argument("--checkpoint", required=True, help="elastic_jax checkpoint directory")
    p.add_argument("--out", required=True, help="GGUF file to write (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "q8_0"])
    p.add_argument("--budget", type=float, help="for an elastic checkpoint: the budget to export, in (0, 1]")


@verb("quantize", "quantise an elastic checkpoint's parent once (FP8 or NVFP4, calibrated input scales); "
                  "export-hf --budget then cuts any budget from it")
def _quantize_args(p):
    p.add_argument("--checkpoint", required=True, help="elastic checkpoint directory")
    p.add_argument("--format", required=True, choices=["fp8", "nvfp4"])
    _out_arg(p, "quantised checkpoint directory to write")
    p.add_argument("--batches", type=int, default=4, help="calibration batches for the static input scales")


@verb("qad", "quantisation-aware distillation: train every budget of an elastic checkpoint through fake-quantised "
             "weights (FP8 or NVFP4) from the frozen unquantised model; resumes from --workdir")
def _qad_args(p):
    p.add_argument("--checkpoint", required=True, help="elastic checkpoint directory (float, from elastify)")
    p.add_argument("--quant", required=True, choices=["fp8", "nvfp4"], help="the format the student is read through")
    p.add_argument("--workdir", required=True, help="run directory: checkpoints/ (the QAD-trained elastic checkpoint), "
                                                    "qad.json, metrics")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (every budget in each)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (warmup, cosine decay)")
    p.add_argument("--teacher", default="budget", choices=["budget", "parent"],
                   help="each budget's own unquantised slice, or the unquantised parent")
    p.add_argument("--eval-batches", type=int, default=8, help="held-out batches for the per-budget figures")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: the experiment's)")


@verb("generate", "generate text from a checkpoint, a Hugging Face directory or a random model")
def _generate_args(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint")
    src.add_argument("--hf")
    src.add_argument("--config", help="random-init model of this config (for smoke tests)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--budget", type=float, help="for an elastic checkpoint: the budget to serve, in (0, 1]")
    p.add_argument("--quant", choices=["fp8", "nvfp4"],
                   help="with --budget: hold the parent quantised, dequantised on the fly inside the jit")
    p.add_argument("--draft-budget", type=float,
                   help="with --budget: a smaller budget of the same checkpoint drafts tokens that --budget checks in "
                        "one pass (nested self-speculative decoding; docs/speculative.md)")
    p.add_argument("--draft-tokens", type=int, default=2,
                   help="with --draft-budget: tokens drafted per round (2: the fastest measured, docs/speculative.md)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)


@verb("pretrain", "pretrain a (parent) model on the built-in or configured data; resumes from --workdir")
def _pretrain_args(p):
    _config_arg(p)
    p.add_argument("--workdir", required=True)


@verb("importance", "rank every elastic axis on calibration data and write the permuted parent, which "
                    "`elastify --parent` then trains from")
def _importance_args(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="parent checkpoint directory")
    src.add_argument("--hf", help="parent as a Hugging Face NemotronH directory")
    p.add_argument("--config", help="experiment whose data section calibrates (default: the data the checkpoint "
                                    "was trained on, else the built-in data); the tokenizer is the parent's own")
    _out_arg(p, "checkpoint directory for the ranked, permuted parent")
    p.add_argument("--batches", type=int, default=8, help="calibration batches")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per calibration sequence")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per calibration batch")


@verb("elastify", "train nested budgets and the router jointly from a parent; one checkpoint out")
def _elastify_args(p):
    _config_arg(p)
    p.add_argument("--parent", required=True, help="parent checkpoint directory or Hugging Face directory")
    p.add_argument("--workdir", required=True)


@verb("plan", "compile the elastic and pretraining steps for a target cluster, no hardware: memory per device, "
      "FLOPs, compile time, whether it fits and on which mesh")
def _plan_args(p):
    from elastic_jax.plan_args import add_plan_args

    _config_arg(p)
    add_plan_args(p)


@verb("slice", "cut one budget (trained or in between) out of an elastic checkpoint, zero-shot")
def _slice_args(p):
    p.add_argument("--checkpoint", required=True, help="elastic checkpoint (or importance-ranked parent)")
    p.add_argument("--budget", type=float, required=True, help="fraction of the parent in (0, 1]")
    _out_arg(p, "directory for the nested model")
    p.add_argument("--format", default="elastic_jax", choices=["elastic_jax", "hf"])


@verb("eval", "reasoning accuracy and latency per budget of an elastic checkpoint (held-out problems)")
def _eval_args(p):
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--budgets", help="comma-separated, e.g. 1.0,0.7,0.4 (default: the trained budgets)")
    p.add_argument("--max-think", type=int, default=64, help="thinking cap in tokens")
    p.add_argument("--max-answer", type=int, default=8)
    p.add_argument("--problems", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quant", choices=["fp8", "nvfp4"], help="serve the parent quantised (dequantised in the jit)")


@verb("budget-control", "one reasoning prompt: one budget thinks (capped), another answers")
def _budget_control_args(p):
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--think-budget", type=float, required=True)
    p.add_argument("--answer-budget", type=float, required=True)
    p.add_argument("--max-think", type=int, default=64, help="thinking cap; then </think> is forced")
    p.add_argument("--max-answer", type=int, default=16)
    p.add_argument("--prompt", required=True, help="e.g. '(3+4)*2=' (<think> is appended when missing)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)


@verb("report", "standard vs elastic budget control over budgets, ordered pairs and thinking caps: table + plot")
def _report_args(p):
    p.add_argument("--checkpoint", required=True)
    _out_arg(p, "directory for the report")
    p.add_argument("--budgets", help="comma-separated (default: the trained budgets)")
    p.add_argument("--caps", default="8,16,32", help="comma-separated thinking caps")
    p.add_argument("--max-answer", type=int, default=8)
    p.add_argument("--problems", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-load", type=float, default=1.0,
                   help="refuse to time when other processes use this many cores or more (before or while timing)")
    p.add_argument("--allow-busy", action="store_true",
                   help="time anyway on a busy machine; results.json then marks the latencies as not a result")


@verb("quickstart", "pretrain a tiny parent, elastify it into 100/70/40%, slice, evaluate, print the table")
def _quickstart_args(p):
    p.add_argument("--workdir", default="quickstart")
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--elastic-steps", type=int, default=240)


@verb("serve", "serve every budget of an elastic checkpoint over an OpenAI-compatible HTTP API "
                "(models <name>@<budget>, <name>@auto; continuous batching; /metrics)")
def _serve_args(p):
    from elastic_jax.serve.server import add_serve_args

    add_serve_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elastic-jax", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="verb", required=True)
    for name, (help_text, add_args) in VERBS.items():
        # argparse %-formats help strings (not descriptions): a literal % must be doubled there
        add_args(sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text))
    return parser


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate --config.a.b=value overrides (also '--config.a.b value') from the other arguments."""
    rest, overrides, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        item = argv[i]
        if item.startswith("--config."):
            if "=" not in item and i + 1 < len(argv):
                item, i = f"{item}={argv[i + 1]}", i + 1
            overrides.append(item)
        else:
            rest.append(item)
        i += 1
    return rest, overrides


def run(args) -> int:
    import elastic_jax as ej
    from elastic_jax.elastic.accounting import format_count

    if args.verb == "params":
        cfg = ej.load_config(args.config, args.overrides)
        total, active = ej.count_params(cfg)
        print(f"total {format_count(total)} ({total:,})\nactive {format_count(active)} ({active:,})")
    elif args.verb == "init":
        from elastic_jax.model_io import save_model

        cfg = ej.load_config(args.config, args.overrides)
        save_model(args.out, cfg, ej.init_params(cfg, args.seed), overwrite=args.overwrite)
        print(f"wrote {args.out}")
    elif args.verb == "import-hf":
        from elastic_jax.convert.hf import import_hf

        import_hf(args.hf, args.out, load_hf(args.hf, params=False)[2], overwrite=args.overwrite)  # tensor by tensor
        print(f"imported {args.hf} -> {args.out}")
    elif args.verb == "export-hf":
        from elastic_jax.deploy import export_budget
        from elastic_jax.elastic.spec import ElasticError
        from elastic_jax.inference.commands import require_budget
        from elastic_jax.inference.load import is_quantized_checkpoint

        if args.budget is None or not is_quantized_checkpoint(args.checkpoint):
            require_budget(args.checkpoint, args.budget, "export-hf")
        if args.budget is not None:  # widths aligned for the runtime, tokenizer files, --quant: Model-Optimizer's
            spec, _ = export_budget(args.checkpoint, args.budget, args.out, quant=args.quant, dtype=args.dtype,
                                    layout=args.layout, overwrite=args.overwrite)
            print(f"exported budget {args.budget} ({spec.to_dict()}) of {args.checkpoint} -> {args.out}")
            return 0
        if args.quant:
            raise ElasticError("export-hf --quant: pass --budget (the budget of an elastic checkpoint to export)")
        cfg, params, tokenizer = load_any(args)  # an elastic checkpoint's full model; its tokenizer
        ej.to_hf(cfg, params, args.out, dtype=args.dtype, layout=args.layout, overwrite=args.overwrite,
                 tokenizer=tokenizer)
        print(f"exported {args.checkpoint} -> {args.out}")
    elif args.verb == "export-gguf":
        from elastic_jax.deploy import export_gguf

        export_gguf(args.checkpoint, args.out, args.dtype, args.budget, overwrite=args.overwrite)
        print(f"exported {args.checkpoint} -> {args.out}")
    elif args.verb == "generate":
        return generate_any(args)
    elif args.verb == "pretrain":
        from elastic_jax.train.loop import run_pretrain

        result = run_pretrain(ej.load_experiment(args.config, args.overrides), args.workdir)
        print(json.dumps(result, default=str, indent=1))
    elif args.verb == "plan":
        from elastic_jax.plan import run_plan_verb

        return run_plan_verb(args)
    elif args.verb == "qad":
        from elastic_jax.train.qad import QADSettings, format_comparison, run_qad

        result = run_qad(args.checkpoint, args.workdir, QADSettings(
            args.quant, steps=args.steps, lr=args.lr, teacher=args.teacher, eval_batches=args.eval_batches,
            checkpoint_every=args.checkpoint_every))
        if "budgets" in result:
            print(f"{format_comparison(result['budgets'])}\nnext: elastic-jax eval --checkpoint "
                  f"{Path(args.workdir) / 'checkpoints'} --quant {args.quant}")
        else:
            print(f"stopped at step {result['stopped_at']}; run the same command again to resume")
    elif args.verb == "quantize":
        from elastic_jax.deploy import quantize_checkpoint

        quantize_checkpoint(args.checkpoint, args.format, args.out, batches=args.batches, overwrite=args.overwrite)
        print(f"quantised {args.checkpoint} ({args.format}) -> {args.out}\n"
              f"next: elastic-jax export-hf --checkpoint {args.out} --budget <fraction> --out <dir>")
    else:
        return run_elastic_verb(args)
    return 0


def run_elastic_verb(args) -> int:
    """importance, elastify, slice and quickstart."""
    import elastic_jax as ej

    if args.verb == "importance":
        importance_verb(args)
    elif args.verb == "elastify":
        from elastic_jax import distributed
        from elastic_jax.train.capacity import check_fits_locally
        from elastic_jax.train.elastify import run_elastify

        distributed.initialize()  # before the device query of the memory check
        check_fits_locally(ej.load_config(args.config, args.overrides), "elastify")
        result = run_elastify(ej.load_experiment(args.config, args.overrides), args.workdir, args.parent)
        from elastic_jax.quickstart import elastify_report

        print(elastify_report(result, Path(args.workdir) / "checkpoints"))
        if "budgets" in result:
            print(f"every budget's architecture and figures: {Path(args.workdir) / 'budgets.json'}")
    elif args.verb == "slice":
        from elastic_jax.deploy import slice_checkpoint, slice_summary

        spec, sub_cfg = slice_checkpoint(args.checkpoint, args.budget, args.out, args.format,
                                         overwrite=args.overwrite)
        print(f"{slice_summary(args.checkpoint, args.budget, spec, sub_cfg)}\n-> {args.out}")
    elif args.verb in ("eval", "budget-control", "report"):
        from elastic_jax.inference.commands import run_inference_verb

        return run_inference_verb(args)
    elif args.verb == "serve":
        from elastic_jax.serve.server import run_serve

        return run_serve(args)
    elif args.verb == "quickstart":
        from elastic_jax.quickstart import run_quickstart

        run_quickstart(args.workdir, args.pretrain_steps, args.elastic_steps, tuple(args.overrides))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from elastic_jax.process import tune_process

    tune_process()  # this process is the command's own: malloc and JAX_PLATFORMS settings, before jax starts
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    args.overrides = overrides
    if overrides and not hasattr(args, "config") and args.verb != "quickstart":
        print(f"error: {args.verb} takes no --config overrides ({overrides})", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from elastic_jax.config import ConfigError
    from elastic_jax.convert.hf_config import ConversionError
    from elastic_jax.elastic.spec import ElasticError
    from elastic_jax.model.functional import InputError
    from elastic_jax.model_io import check_output

    try:
        if getattr(args, "out", None):
            check_output(args.out, getattr(args, "overwrite", False))  # before any work: refuse a non-empty --out
        return run(args)
    except (ConfigError, ConversionError, InputError, ElasticError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
