"""The sentences and tables of "Is nesting worth it?", each a function of results.json (reproduce_report.py) alone,
so the documentation cannot say what the results do not."""

from __future__ import annotations

import math
from typing import Any

PAPER = ("Nemotron Elastic reports its nested 9B at 75.95 (average over its benchmarks) against 75.99 for Nano V2 9B "
         "trained separately, and about 7x fewer tokens than Minitron-style compression for the family (METHOD §1).")


def tok(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def loss(e: dict[str, Any]) -> str:
    return f"{e['mean']:.4f}" + (f" ± {e['spread']:.4f}" if e["n"] > 1 else "")


def acc(e: dict[str, Any]) -> str:
    return f"{e['mean']:.1%}" + (f" ± {e['spread']:.1%}" if e["n"] > 1 else "")


def cell(e: dict[str, Any]) -> str:
    return f"{loss(e['loss'])} / {acc(e['accuracy'])}" if e["loss"]["n"] else "-"


def binomial_points(p: float, n: int) -> float:
    """One model's accuracy standard error in points, sqrt(p (1 - p) / n) x 100."""
    return 100 * math.sqrt(p * (1 - p) / n)


def _x(point: float) -> str:
    return "E" if point == 1 else f"{point:g}E"


def what_lines(s: dict[str, Any]) -> list[str]:
    parent_steps = s["rows"]["parent"]["steps"] if "parent" in s["rows"] else 0
    points = ", ".join(_x(p) for p in s["points"])
    halves = ", ".join(_x(p / 2) for p in s["points"])
    seeds = ", ".join(str(k) for k in s["seeds"])
    return [
        "## Is nesting worth it? One elastic run against Minitron-style compression at equal tokens", "",
        "The question users ask first: is a nested slice as good as a model of its size, and for how many tokens? "
        + PAPER + " `benchmarks/reproduce.py` measures the same trade at small scale on a CPU:", "",
        "```",
        "python benchmarks/reproduce.py --workdir runs/reproduce                    # the default scale",
        "python benchmarks/reproduce.py --workdir /tmp/smoke --scale smoke --inline  # every kind of row, tiny",
        "python benchmarks/reproduce_render.py    # these sections, from docs/reproduce_results.json",
        "```", "",
        f"**What it trains** (scale `{s['scale']}`). One parent, `configs/reproduce.py` (`tiny`'s pattern at 1.5x "
        "its width, the \"medium\" reasoning preset mixed 70 / 30 with Python source), pretrained for "
        f"T = {tok(s['T'])} tokens ({parent_steps} steps). Every other row starts from it, with seeds {seeds} "
        "planned (the seed sets the row's data order, initialisation and router, never the parent). E is "
        f"{tok(s['E'])} tokens; the curve has the points {points}.", "",
        "| row | what | tokens beyond the parent |", "|---|---|---|",
        "| elastic, curve | the parent elastified into budgets 1.0 / 0.7 / 0.4 of total parameters (KD from the "
        "frozen parent, two stages), each budget's architecture fixed from the first step to the router-free "
        f"search's choice (setting `fixed`) | {points} |",
        "| elastic, settings | the same at E with the other settings of the table below | E |",
        "| Minitron-style | the parent permuted by that seed's importance ranking, pruned to the same 0.7 (0.4) "
        "architecture, distilled alone from the parent (forward KL, `train/distill.py`) | "
        f"{halves} per size: the pair's total is the point |",
        "| trained alone | a model of the same 0.7 (0.4) architecture, from scratch | T + E |", "",
        "The curve fixes the shapes from step 0 with the search, for the elastic run and Minitron-style alike: both "
        "train the same architectures for the same tokens, and no router decides part of the outcome. The search "
        "runs once (in the first seed's run at E) and every seed takes its shapes.", "",
        f"Every model is scored alike (`benchmarks/reproduce_eval.py`): eval loss on the same held-out batches, "
        f"then accuracy by greedy decoding of the first {s['problems']} held-out reasoning problems. One model's "
        f"accuracy carries a binomial standard error of up to {binomial_points(0.5, s['problems']):.1f} points; "
        "± is the standard deviation over seeds.", ""] + ([
            f"Finished: {s['planned'] - len(s['missing'])} of the {s['planned']} planned rows (the others are listed "
            f"at the end); every point of the curve has {curve_seeds(s)} seed(s).", ""] if s["missing"] else [])


def parent_lines(s: dict[str, Any]) -> list[str]:
    p, check = s["parent"], s["parent_check"]
    if not p:
        return ["The parent has not finished.", ""]
    twins = []
    for b, t in check["budgets"].items():
        values = ", ".join(f"{v:.4f}" for v in t["twin_losses"])
        twins.append(f"at {b} ({t['total_params']['mean'] / 1e3:.0f}K parameters) {values}")
    verdict = ("**The parent is trained long enough:** every twin's eval loss is above the parent's."
               if check["holds"] else "**The parent is not trained long enough:** a twin matches or beats it.")
    head = (f"**The teacher.** The parent ({p['total_params'] / 1e3:.0f}K parameters) reaches eval loss "
            f"{p['loss']:.4f} and {p['accuracy']:.1%} accuracy (± {binomial_points(p['accuracy'], p['problems']):.1f} "
            "points binomial). ")
    if not twins:
        return [head + "The models of its smaller budgets' shapes trained alone for T + E have not finished, so "
                "whether they beat it is not measured.", ""]
    return [head + "Models of its smaller budgets' shapes trained alone for T + E reach, per seed, "
            + "; ".join(twins) + ". " + verdict, ""]


def settings_lines(s: dict[str, Any], heading: bool = True) -> list[str]:
    table, choice = s["settings"], s["choice"]
    lines = ["### Which setting trains every budget", ""] if heading else []
    lines += [f"Each setting trained at E ({tok(s['E'])} tokens) from the same parent; eval loss / accuracy, mean ± "
              "spread over the seeds finished (column seeds). Δ is the setting minus `router` (the old default), "
              "± the standard error of that difference:", "",
              "| setting | seeds | budget 1 | budget 0.7 | budget 0.4 | Δ loss at 0.4 | Δ loss at 1 |",
              "|---|---|---|---|---|---|---|"]
    for name, t in table.items():
        cells = " | ".join(cell(t["budgets"][b]) for b in ("1", "0.7", "0.4"))
        gaps = " | ".join(f"{g['gap']:+.4f} ± {g['spread']:.4f}" if choice else "-"
                          for g in ((choice or {}).get("small_gap", {}).get(name), (choice or {}).get(
                              "full_gap", {}).get(name)) if g) or "- | -"
        lines.append(f"| `{name}`: {t['what']} | {t['seeds']} | {cells} | {gaps} |")
    lines.append("")
    if not choice:
        return lines + ["Not every setting has finished on every seed; no choice yet.", ""]
    best = choice["best"]
    if best == "router":
        why = ("No other setting lowers the 0.4 budget's mean eval loss without raising the full model's by more "
               "than the spread of the difference, so the old default stays.")
    else:
        g = choice["small_gap"][best]
        why = (f"`{best}` gives the lowest mean eval loss at 0.4 ({g['gap']:+.4f} ± {g['spread']:.4f} against the "
               "old default) among the settings whose full model is no worse than the old default's by more than the "
               f"spread of the difference ({', '.join(f'`{e}`' for e in choice['eligible'])}).")
    return lines + [f"**Chosen: `{best}`.** " + why, ""]


def curve_lines(s: dict[str, Any]) -> list[str]:
    curves = s["curves"]
    if not curves["elastic"]:
        return []
    lines = ["### The curves", "", "Eval loss / accuracy at each point, mean ± spread over seeds. Tokens are each "
             "family's beyond the parent: one elastic run, or the two Minitron-style runs of the pair together:", "",
             "| budget | tokens | elastic (one run) | Minitron-style (two runs) |", "|---|---|---|---|"]
    parent = s["parent"]
    for b in ("1", "0.7", "0.4"):
        minitron = {e["point"]: e for e in curves["minitron"].get(b, [])}
        elastic = {e["point"]: e for e in curves["elastic"].get(b, [])}
        for p in sorted({*minitron, *elastic}):
            other = (cell(minitron[p]) if p in minitron else
                     f"the parent itself: {parent['loss']:.4f} / {parent['accuracy']:.1%}" if b == "1" and parent
                     else "-")
            mine = cell(elastic[p]) if p in elastic else "not finished"
            lines.append(f"| {b} | {_x(p)} = {tok(round(p * s['E']))} | {mine} | {other} |")
    return lines + [""]


def _match(h: dict[str, Any], e_tokens: int) -> str:
    m = h["mean_curve"]
    if m["bound"] == "never":
        return "never within the curve"
    text = f"{m['tokens'] / e_tokens:.2f}E ({tok(m['tokens'])})"
    return ("at most " + text) if m["bound"] == "at_most" else text


def _seeds(h: dict[str, Any], e_tokens: int) -> str:
    parts = []
    for x in h["per_seed"]:
        parts.append("never" if x["bound"] == "never" else
                     ("≤ " if x["bound"] == "at_most" else "") + f"{x['tokens'] / e_tokens:.2f}E")
    return ", ".join(parts)


def headline_lines(s: dict[str, Any]) -> list[str]:
    heads, e = s["headline"], s["E"]
    if not heads:
        return []
    lines = ["### Tokens to match Minitron-style at E", "",
             f"Minitron-style at E spends {tok(e)} on the pair (E / 2 per size). The elastic tokens at which the "
             "elastic curve reaches the same eval loss (linear in log tokens between points; per seed against that "
             "seed's Minitron-style run):", "",
             "| budget | Minitron-style at E | elastic tokens to match (mean curve) | per seed | per seed, mean ± "
             "spread |",
             "|---|---|---|---|---|"]
    for b, h in heads.items():
        spread = h["per_seed_ratio"]
        spread = f"{spread['mean']:.2f}E ± {spread['spread']:.2f}E" if spread and spread["n"] > 1 else "-"
        lines.append(f"| {b} | {loss(h['target_loss'])} | {_match(h, e)} | {_seeds(h, e)} | {spread} |")
    return lines + ["", headline_sentence(s), ""]


def _times(r: float) -> str:
    """A token ratio against Minitron-style at E in words."""
    if 0.9 <= r <= 1.1:  # closer than the curve's points can tell apart
        return f"about as many tokens as Minitron-style ({r:.2f}x)"
    return f"{1 / r:.1f}x fewer tokens than Minitron-style" if r < 1 else f"{r:.1f}x the tokens of Minitron-style"


def headline_sentence(s: dict[str, Any]) -> str:
    """The plain reading of the headline: fewer or more tokens than Minitron-style, per budget and for both."""
    heads, parts, worst = s["headline"], [], 0.0
    for b, h in heads.items():
        m = h["mean_curve"]
        if m["bound"] == "never":
            reached = max(e["point"] for e in s["curves"]["elastic"][b])
            parts.append(f"at {b} it does not match Minitron-style at E within {_x(reached)} (the largest point "
                         "measured)")
            worst = math.inf
            continue
        r = m["tokens"] / s["E"]
        worst = max(worst, r)
        bound = "at most " if m["bound"] == "at_most" else ""
        parts.append(f"at {b} it needs {bound}{r:.2f}E, {_times(r)}")
    if worst == math.inf:
        family = "so for the family (both sizes) it does not match Minitron-style within the measured tokens"
    else:
        family = f"so the family (both sizes) needs {worst:.2f}E, {_times(worst)} (the paper: about 7x fewer)"
    plain = ""
    if worst >= 0.9:
        plain = (" At this scale nesting saves no training tokens against compressing each size alone; what it "
                 "saves is runs and storage: one run and one checkpoint for the whole family.")
    return "**The result:** " + "; ".join(parts) + "; " + family + "." + plain


def curve_seeds(s: dict[str, Any]) -> int:
    """The seeds every point of the curve has finished (elastic and Minitron-style)."""
    entries = [e for kind in ("elastic", "minitron") for c in s["curves"][kind].values() for e in c]
    return min((e["seeds"] for e in entries), default=0)


def readme_paragraph(s: dict[str, Any]) -> str:
    """The README's paragraph: the question, the headline sentence, the teacher check, where to read more."""
    check = ("the parent beats" if s["parent_check"]["holds"] else "the parent does not beat" if
             s["parent_check"]["budgets"] else "not yet measured: whether the parent beats")
    n = curve_seeds(s)
    return ("`benchmarks/reproduce.py` elastifies one small parent and compresses it "
            f"Minitron-style (prune, then distil each size alone) at equal total tokens, {n} seed{'s' * (n != 1)} "
            f"per point{' so far' if s['missing'] else ''}, "
            f"{s['problems']} held-out problems per model ({check} models of its smaller shapes trained alone for "
            f"T + E). Against Minitron-style at E ({tok(s['E'])} tokens for the pair), the elastic run: "
            + headline_sentence(s).removeprefix("**The result:** ")
            + " Curves, settings and every figure: [docs/results.md](docs/results.md).")
