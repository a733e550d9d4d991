"""Where a verb's model comes from (--checkpoint, --hf or --config, each checked for what it is), and the two verbs
that read any of them: `generate` and `importance` (which writes the ranked parent). cli.py declares the arguments
and dispatches here."""

from __future__ import annotations

from pathlib import Path


def load_hf(path: str, params: bool = True) -> tuple:
    """(cfg, params, metadata) of a Hugging Face directory; metadata carries its tokenizer when it has one
    (with `params=False`: cfg and params None, the directory checked and its metadata read)."""
    from elastic_jax.checkpoint import checkpoint_steps
    from elastic_jax.convert.hf import from_hf
    from elastic_jax.data import load_tokenizer

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such directory (expected a Hugging Face model directory)")
    if checkpoint_steps(path):
        raise FileNotFoundError(f"{path} is an elastic_jax checkpoint, not a Hugging Face directory: pass it with "
                                "--checkpoint")
    cfg, weights = from_hf(path) if params else (None, None)
    has_tok = (Path(path) / "tokenizer.json").exists()
    return cfg, weights, ({"tokenizer": load_tokenizer(path).to_dict()} if has_tok else {})


def load_source(args) -> tuple:
    """(cfg, params, metadata) from --checkpoint or --hf (an elastic checkpoint gives its full model)."""
    if getattr(args, "hf", None):
        return load_hf(args.hf)
    from elastic_jax.model_io import load_model

    cfg, params, meta = load_model(args.checkpoint)
    return cfg, (params["model"] if "router" in params else params), meta


def load_any(args) -> tuple:
    """(cfg, params, tokenizer) from --checkpoint, --hf or --config."""
    from elastic_jax.data import load_tokenizer
    from elastic_jax.data.tokenizer import tokenizer_from_dict

    if getattr(args, "checkpoint", None) or getattr(args, "hf", None):
        cfg, params, meta = load_source(args)
        return cfg, params, tokenizer_from_dict(meta["tokenizer"]) if meta.get("tokenizer") else load_tokenizer(None)
    import elastic_jax as ej

    cfg = ej.load_config(args.config, args.overrides)
    return cfg, ej.init_params(cfg, 0), load_tokenizer(None)


def generate_any(args) -> int:
    """`generate` from an elastic checkpoint (a budget of it, streamed), a plain one, a Hugging Face directory or a
    random --config model."""
    check_generate_source(args)
    if args.checkpoint or args.budget is not None:
        from elastic_jax.inference.commands import generate_verb, is_elastic_checkpoint

        if args.budget is not None or args.quant or is_elastic_checkpoint(args.checkpoint):
            return generate_verb(args)
    import elastic_jax as ej

    cfg, params, tokenizer = load_any(args)
    prompt = [tokenizer.encode(args.prompt, add_bos=True)]
    out = ej.generate(cfg, params, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, seed=args.seed, eos_id=tokenizer.eos_id)
    print(tokenizer.decode(out[0, len(prompt[0]):].tolist(), skip_special=False))
    return 0


def check_generate_source(args) -> None:
    """--budget, --quant and --draft-budget choose inside an elastic checkpoint; --hf and --config models are one
    model each; a draft budget drafts for --budget."""
    from elastic_jax.elastic.spec import ElasticError

    if args.draft_budget is not None and args.budget is None:
        raise ElasticError(f"generate --draft-budget {args.draft_budget:g}: needs --budget, the larger budget of the "
                           "same elastic checkpoint that checks the drafts")
    flag = "--budget" if args.budget is not None else "--quant" if args.quant else None
    if flag and not args.checkpoint:
        given = f"--hf {args.hf} is a Hugging Face directory" if args.hf else f"--config {args.config} is random"
        raise ElasticError(f"generate {flag}: needs an elastic checkpoint (--checkpoint, elastify's output); {given}, "
                           f"one model: leave {flag} out")


def importance_verb(args) -> None:
    """Rank the parent on calibration batches of the experiment's data (its own tokenizer), store it permuted."""
    import elastic_jax as ej
    from elastic_jax.data.calibration import calibration_batches, calibration_source
    from elastic_jax.elastic import permute_params, ranking_to_json, run_importance
    from elastic_jax.model_io import save_model

    cfg, params, meta = load_source(args)
    experiment = ej.load_experiment(args.config, args.overrides) if args.config else None
    data, tokenizer = calibration_source(meta, cfg.vocab_size, experiment)
    batches = calibration_batches(data, tokenizer, args.batches, args.seq_len, args.batch_size,
                                  max_seq_len=cfg.max_position_embeddings)
    _, ranking = run_importance(cfg, params, batches)
    meta = {k: v for k, v in meta.items() if k not in ("model", "format", "sliced_from")}
    meta["tokenizer"] = tokenizer.to_dict()
    meta["elastic"] = {"ranking": ranking_to_json(ranking)}
    save_model(args.out, cfg, permute_params(params, cfg, ranking), meta, overwrite=args.overwrite)
    print(f"ranked the parent on {len(batches)} calibration batches ({tokenizer!r}); permuted parent -> {args.out}\n"
          f"next: elastic-jax elastify --config <experiment> --parent {args.out} --workdir <dir>")
