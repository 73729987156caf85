"""The paper's claims and the criteria that judge them on the testbed, declared before the reproduction ran.

Every claim is tested on data/runs/<profile>/summary.json (rlsd.runs.summarise) and, for credit, on
figures/05_credit_shares.json (notebook 05). Differences between methods are PAIRED BY SEED (the same seed draws the
same prompts and sampling seeds in every method) and judged by their mean and paired standard error (SE) over seeds:

    claim                                   criterion ("reproduced" when it holds; n < MIN_SEEDS: undetermined)
    RLSD > GRPO, area under the test curve  paired mean difference > 2 SE
    RLSD > GRPO, speed                      steps to the declared training-reward threshold: paired mean < -2 SE
    RLSD > GRPO, final test accuracy        paired mean difference > 2 SE
    RLSD's entropy stays above GRPO's       final-10% entropy, paired mean difference > 2 SE
    GRPO's entropy collapses                final-10% entropy < 0.8 x first-10% entropy in every GRPO seed
    RLSD leaks no more than GRPO            peak P(mention) over the whole test trajectory: paired mean + 2 SE
                                            <= LEAK_MARGIN (RLSD may not exceed GRPO by more than 2 points)
    OPSD leaks                              peak P(mention), OPSD - GRPO paired: mean > 2 SE
    OPSD peaks, then declines               per seed, peak test accuracy - final: mean > 2 SE (seed-to-seed SE)
    the online teacher collapses            online OPSD's final accuracy < the warm start's - 10 points in every seed
    the clip fires on ~3-6% of tokens       RLSD's clipped share (authors' convention: over all response tokens)
                                            within a factor 2 of the paper's range, 1.5%-12%
    credit lands on decisive tokens         decisive tokens' share of the moved credit > 1.5 x their token share
    ... and on the read-outs the answer     in each pinned family (count, pair): mean |Δ| on needed read-outs > on
    pins                                    the unneeded ones (information, not reading skill)

Theorem 1 is an identity, checked exactly on enumerated distributions in notebook 01 (and tests/test_theory.py);
it is not a testbed measurement.
"""

from __future__ import annotations

import json
from pathlib import Path

MIN_SEEDS = 3
LEAK_MARGIN = 0.02
COLLAPSE_DROP = 0.10
ENTROPY_COLLAPSE = 0.8
CLIP_RANGE = (0.015, 0.12)
CREDIT_FACTOR = 1.5
PINNED = ("count", "pair")  # rlsd.testbed.PINNED_FAMILIES


def _paired(summary: dict, name: str, key: str) -> dict | None:
    return summary.get("paired_vs_grpo", {}).get(name, {}).get(key)


def _verdict(holds: bool | None, n: int) -> str:
    if holds is None or n < MIN_SEEDS:
        return f"undetermined ({n} seeds)" if holds is not None else "not run"
    return "yes" if holds else "no"


def _fmt(p: dict | None, scale: float = 100.0, unit: str = " points", digits: int = 1) -> str:
    if not p or p.get("mean") is None:
        return "not run"
    se = p.get("se") or 0.0
    return (f"{p['mean'] * scale:+.{digits}f} ± {se * scale:.{digits}f}{unit} (paired SE; "
            f"{p.get('positive', 0)}/{p['n']} seeds positive)")


def _paired_claim(summary: dict, name: str, key: str, sign: int, scale=100.0, unit=" points", digits=1):
    p = _paired(summary, name, key)
    if not p or p.get("mean") is None:
        return None, 0, "not run"
    se = p.get("se") or 0.0
    holds = (p["mean"] > 2 * se) if sign > 0 else (p["mean"] < -2 * se)
    return holds, p["n"], _fmt(p, scale, unit, digits)


def judge(summary: dict, credit: dict | None = None) -> list[dict]:
    """One row per claim: claim, measured (text), reproduced (yes / no / undetermined / not run)."""
    t = summary["table"]
    rows = []

    def add(claim, holds, n, measured):
        rows.append({"claim": claim, "measured": measured, "reproduced": _verdict(holds, n)})

    add("RLSD > GRPO: area under the test-accuracy curve", *_paired_claim(summary, "rlsd", "auc", +1))
    add("RLSD > GRPO: speed (steps to the training-reward threshold)",
        *_paired_claim(summary, "rlsd", "steps_to_reward", -1, scale=1.0, unit=" steps", digits=0))
    add("RLSD > GRPO: final test accuracy", *_paired_claim(summary, "rlsd", "final", +1))
    add("RLSD's entropy stays above GRPO's", *_paired_claim(summary, "rlsd", "final_entropy", +1, scale=1.0,
                                                             unit=" nats", digits=3))
    g = t.get("grpo")
    if g:
        curve = summary.get("entropy_first_last", {}).get("grpo")
        if curve:
            ratios = [last / first for first, last in curve if first]
            add("GRPO's entropy collapses", all(r < ENTROPY_COLLAPSE for r in ratios), len(ratios),
                "final/first-10% entropy per seed: " + ", ".join(f"{r:.2f}" for r in ratios)
                + f" (needs < {ENTROPY_COLLAPSE} in every seed)")
    p = _paired(summary, "rlsd", "peak_mention_prob")
    if p and p.get("mean") is not None:
        add("RLSD leaks no more than GRPO (peak P(mention) over the trajectory)",
            p["mean"] + 2 * (p.get("se") or 0.0) <= LEAK_MARGIN, p["n"],
            _fmt(p, digits=2) + f"; needs mean + 2 SE <= {100 * LEAK_MARGIN:.0f} points")
    add("OPSD leaks: its peak P(mention) exceeds GRPO's",
        *_paired_claim(summary, "opsd", "peak_mention_prob", +1, digits=2))
    o = t.get("opsd")
    if o and o.get("peak_minus_final"):
        d = o["peak_minus_final"]
        add("OPSD's test accuracy peaks, then declines", d["mean"] > 2 * (d.get("se") or 0.0), d["n"],
            f"peak - final per seed {100 * d['mean']:+.1f} ± {100 * (d.get('se') or 0):.1f} points (SE); mean-curve "
            f"peak at step {o['accuracy_curve'].get('peak_step')}")
    on = t.get("opsd_online")
    if on and on["final"]["n"]:
        base = t["base"]["accuracy"]
        finals = on.get("final_per_seed", [])
        add("The online teacher collapses", bool(finals) and all(f < base - COLLAPSE_DROP for f in finals),
            len(finals), f"final accuracy per seed {', '.join(f'{100 * f:.1f}%' for f in finals)} vs warm start "
            f"{100 * base:.1f}% (needs < warm start - {100 * COLLAPSE_DROP:.0f} points in every seed)")
    r = t.get("rlsd")
    if r and r["clip_frac_authors"]["mean"] is not None:
        share = r["clip_frac_authors"]["mean"]
        add("The evidence-weight clip fires on ~3-6% of tokens", CLIP_RANGE[0] <= share <= CLIP_RANGE[1],
            r["n_seeds"], f"{100 * share:.1f}% of all response tokens (authors' convention; ours, over tokens with "
            f"A != 0: {100 * r['clip_frac_ours']['mean']:.1f}%); needs {100 * CLIP_RANGE[0]:.1f}-{100 * CLIP_RANGE[1]:.0f}%")
    if credit:
        s = credit["shares"]["all"]
        add("Credit lands on decisive tokens", s["decisive_moved_share"] > CREDIT_FACTOR * s["decisive_token_share"],
            MIN_SEEDS, f"decisive tokens: {100 * s['decisive_token_share']:.1f}% of tokens, "
            f"{100 * s['decisive_moved_share']:.1f}% of the moved credit ({s['n']} responses; needs > "
            f"{CREDIT_FACTOR}x)")
        fams = {f: credit.get("per_family", {}).get(f) for f in PINNED} if credit.get("per_family") else {}
        pairs = {f: (v["relevant_readout"]["mean_abs_delta"], v["other_readout"]["mean_abs_delta"])
                 for f, v in fams.items() if v and None not in (v["relevant_readout"]["mean_abs_delta"],
                                                                v["other_readout"]["mean_abs_delta"])}
        if pairs:
            add("... and, where the answer pins them, on the read-outs it needs rather than the others",
                all(a > b for a, b in pairs.values()), MIN_SEEDS,
                "; ".join(f"{f}: mean absolute Δ {a:.3f} nats on needed read-outs vs {b:.3f} on the others"
                          for f, (a, b) in pairs.items()))
    return rows


def load_and_judge(logs: str | Path, credit_path: str | Path | None = None) -> list[dict]:
    summary = json.loads((Path(logs) / "summary.json").read_text())
    credit = json.loads(Path(credit_path).read_text()) if credit_path and Path(credit_path).exists() else None
    return judge(summary, credit)


def claims_markdown(rows: list[dict]) -> str:
    lines = ["| claim | measured | reproduced |", "|---|---|---|"]
    lines += [f"| {r['claim']} | {r['measured']} | **{r['reproduced']}** |" for r in rows]
    return "\n".join(lines)
