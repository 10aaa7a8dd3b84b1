"""The claims table of docs/RESULTS.md, computed from the MLflow runs of a reproduction.

    python -m fitact_pipeline -m experiment=repro_cpu
    python -m fitact_pipeline -m experiment=repro_cpu_fig1
    python -m fitact_pipeline.report experiment=repro_cpu
    python benchmarks/repro_claims.py                 # --experiment repro_cpu --fig1 repro_cpu_fig1
    python benchmarks/repro_claims.py --experiment repro_cpu_ablation   # issue 19: variants vs FitAct

Reads the finished job runs of the two experiments (their per-trial accuracies, and the report's
table1_overhead.csv, written by the report command above) and prints, in Markdown: the run ids,
mean accuracy per rate, every variant of FitAct (ablations, ProAct) minus FitAct at every rate with
its paired CI and what the tests establish, the ordering claims with their tests, and one row per
claim of the paper with our number and whether it holds. The last line is JSON with the same verdicts.

Claims are decided by tests that can fail (fitact_pipeline/claims.py, DESIGN.md §2.5): "A > B" at
one rate by a one-sided test on the per-trial differences over the same fault maps (--test; default
the bounded-mean test that the paired interval shown inverts, valid for any distribution), "A ties
B" by equivalence within --margin (TOST), Holm-adjusted across each claims table. A claim the test
does not establish is "not supported": no difference found is never read as ">=".
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fitact_pipeline import claims  # noqa: E402
from fitact_pipeline.report import Experiment, rate_stats, without_design  # noqa: E402
from fitact_pipeline.report.tables import read_csv  # noqa: E402

ORDER = ["none", "ranger", "clipact", "fitact"]


def read_table(path: Path) -> list[dict[str, str]]:
    """A report CSV with its protection columns named by variant alone (the campaign design that
    measured a curve is not part of what it compares)."""
    rows = read_csv(path)
    for row in rows:
        for key in ("protection", "protection_a", "protection_b"):
            if key in row:
                row[key] = without_design(row[key])
    return rows


def load(client: MlflowClient, name: str, workdir: Path) -> Experiment | None:
    exp = client.get_experiment_by_name(name)
    return None if exp is None else Experiment(client, exp.experiment_id, workdir)


def runs_table(exp: Experiment) -> list[str]:
    lines = ["| model | protection | run id | clean test acc | " + " | ".join(
        f"{r:.0e}" for r in rates_of(exp)) + " |", "|---" * (4 + len(rates_of(exp))) + "|"]
    for job in sorted(exp.jobs, key=lambda j: (j.model, ORDER.index(j.protection) if j.protection in ORDER else 9)):
        stats = rate_stats(job.metrics)
        cells = [f"{100 * stats[r]['mean']:.1f}" if r in stats else "-" for r in rates_of(exp)]
        lines.append(f"| {job.model} w{job.params.get('model.width', '?')} | {without_design(job.variant)} | `{job.run_id}` | "
                     f"{100 * job.metrics.get('clean_accuracy', float('nan')):.2f} % | " + " | ".join(cells) + " |")
    return lines


def baselines_table(exp: Experiment) -> list[str]:
    """One row per trained baseline (its unprotected job): training time and clean accuracies."""
    lines = ["| model | width | epochs | training time | val acc (BN folded) | clean test acc (Q15.16) | run id |",
             "|---|---|---|---|---|---|---|"]
    for job in sorted((j for j in exp.jobs if j.protection == "none"), key=lambda j: j.model):
        m = job.metrics
        lines.append(f"| {job.model} | {job.params.get('model.width')} | {job.params.get('train.epochs')} | "
                     f"{m['train_time_s'] / 60:.1f} min | {100 * m['clean_val_accuracy']:.2f} % | "
                     f"{100 * m['clean_accuracy']:.2f} % | `{job.run_id}` |")
    return lines


def rates_of(exp: Experiment) -> list[float]:
    return sorted({r for job in exp.jobs for r in rate_stats(job.metrics)})


def collapse(exp: Experiment) -> tuple[str, bool, dict]:
    """The unprotected model loses most of its accuracy at the highest rate."""
    parts, ok, data = [], True, {}
    for job in sorted((j for j in exp.jobs if j.protection == "none"), key=lambda j: j.model):
        stats = rate_stats(job.metrics)
        top = max(stats)
        clean, low = job.metrics["clean_accuracy"], stats[top]["mean"]
        data[job.model] = {"clean": clean, "rate": top, "mean": low}
        ok &= clean - low >= 0.2
        parts.append(f"{job.model}: {100 * clean:.1f} % -> {100 * low:.1f} % at {top:.0e}")
    return "; ".join(parts), ok, data


def trial_accuracies(jobs, trials_of) -> dict[tuple, dict[str, dict[tuple[float, int], float]]]:
    """{context: {variant: {(rate, trial): accuracy}}}: the per-trial accuracies every paired claim
    is tested on (trial i of every variant of a context saw the same fault map, and in the nested
    design the same images). Variants are named without their campaign design."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for job in jobs:
        out[job.context][without_design(job.variant)].update(trials_of(job))
    return out


def paired(by_variant: dict, a: str, b: str, min_rate: float = 0.0) -> dict[float, list[float]]:
    """{rate: [acc_a - acc_b per shared trial]} for every rate >= min_rate both variants ran."""
    if a not in by_variant or b not in by_variant:
        return {}
    return claims.paired_by_rate(by_variant[a], by_variant[b], min_rate)


def ordering(trials: dict, min_rate: float, alpha: float, test: str) -> tuple[str, bool, dict, list[str]]:
    """FitAct > Clip-Act > Ranger > none at every rate >= min_rate: one superiority claim per
    (model, pair, rate), Holm across them all. Holds only if every one is supported."""
    pairs = [("fitact", "clipact"), ("clipact", "ranger"), ("ranger", "none"), ("fitact", "none")]
    found = [claims.Claim(f"{context[0]}: {a} > {b} at {rate:.0e}", ">", tuple(d))
             for context, by_variant in sorted(trials.items(), key=lambda kv: repr(kv[0]))
             for a, b in pairs for rate, d in sorted(paired(by_variant, a, b, min_rate).items())]
    decisions = claims.decide(found, alpha, test)
    per_pair: dict = defaultdict(list)
    for d in decisions:
        per_pair[d.claim.name.rsplit(" at ", 1)[0]].append(d)
    parts = [f"{name}: supported at {sum(d.supported for d in ds)}/{len(ds)} rates"
             + ("" if all(d.supported for d in ds) else " (not at " + ", ".join(
                 d.claim.name.rsplit(" at ", 1)[1] for d in ds if not d.supported) + ")")
             for name, ds in sorted(per_pair.items())]
    ok = bool(decisions) and all(d.supported for d in decisions)
    data = {d.claim.name: {"p_adjusted": d.p_adjusted, "verdict": d.verdict} for d in decisions}
    return "<br>".join(parts), ok, data, claims.table(decisions)


def versus_fitact(trials: dict, margin: float, alpha: float, test: str) -> tuple[list[str], dict]:
    """Every other variant of a run (FitAct's ablations: no post-training, channel, layer; ProAct;
    post-training settings) minus FitAct as published, at every rate: the mean paired difference
    over the same trials, its CI, and what the tests establish: variant > FitAct (">"), FitAct >
    variant ("<"), a tie within the margin ("="), or nothing ("?"); Holm across the whole table."""
    cells: dict = defaultdict(dict)
    found = []
    for context, by_variant in sorted(trials.items(), key=lambda kv: repr(kv[0])):
        for variant in sorted(v for v in by_variant if v not in ORDER):
            for rate, d in sorted(paired(by_variant, variant, "fitact").items()):
                name = f"{context[0]}: {variant}"
                cells[name][rate] = (len(found), claims.shown_interval(d, test))
                found += claims.comparison(variant, "fitact", d, margin, where=f"({context[0]}, {rate:.0e})")
    if not found:
        return [], {}
    decisions = claims.decide(found, alpha, test)
    rates = sorted({r for per_rate in cells.values() for r in per_rate})
    lines = ["| model: variant | " + " | ".join(f"{r:.0e}" for r in rates) + " |", "|---" * (1 + len(rates)) + "|"]
    data: dict = {}
    for name, per_rate in sorted(cells.items()):
        row = []
        for rate in rates:
            if rate not in per_rate:
                row.append("-")
                continue
            first, (mean, low, high) = per_rate[rate]
            better, worse, tie = (decisions[first + i].supported for i in range(3))
            mark = "".join(m for m, on in ((">", better), ("<", worse), ("=", tie)) if on) or "?"
            row.append(f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] {mark}")
            data.setdefault(name, {})[f"{rate:.0e}"] = {
                "mean": mean, "ci": [low, high], "better": better, "worse": worse, "tie": tie,
                "p_adjusted": [decisions[first + i].p_adjusted for i in range(3)]}
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines, data


def variant_costs(table_csv: Path) -> list[str]:
    """Bound memory and bounds-stage time of every FitAct variant and ProAct (Table I's rows)."""
    rows = [r for r in read_table(table_csv) if r["protection"].startswith(("fitact", "proact"))] \
        if table_csv.exists() else []
    lines = ["| model | variant | bound memory (+% of the model) | bounds training s | / baseline training |",
             "|---|---|---|---|---|"]
    def known(value: str) -> bool:
        return value not in ("", "nan")

    for r in sorted(rows, key=lambda r: (r["model"], r["protection"])):
        seconds = f"{float(r['posttrain_time_s']):.0f}" if known(r["posttrain_time_s"]) else "0"
        share = f"{100 * float(r['posttrain_overhead']):.1f} %" if known(r["posttrain_overhead"]) else "-"
        lines.append(f"| {r['model']} | {r['protection']} | {100 * float(r['memory_overhead']):+.2f} % | "
                     f"{seconds} | {share} |")
    return lines if rows else []


def gbrelu_tradeoff(exp: Experiment | None) -> tuple[str, bool | None, dict]:
    """Fig. 1: a small bound costs clean accuracy, a large one protects less; the best bound is inside."""
    if exp is None or not exp.jobs:
        return "no GBReLU runs", None, {}
    points = {}
    for job in exp.jobs:
        stats = rate_stats(job.metrics)
        points[float(job.params["protection.bound"])] = {
            "clean": job.metrics["clean_accuracy"], **{f"{r:.0e}": s["mean"] for r, s in stats.items()}}
    bounds = sorted(points)
    rates = [k for k in points[bounds[0]] if k != "clean"]
    # the rate where the bound matters most (at the highest rates every bound is at chance)
    top = max(rates, key=lambda r: max(points[b][r] for b in bounds) - min(points[b][r] for b in bounds))
    best = max(bounds, key=lambda b: points[b][top])
    clean_drop = points[bounds[-1]]["clean"] - points[bounds[0]]["clean"]
    holds = bounds[0] < best < bounds[-1] and points[best][top] > points[bounds[-1]][top] and clean_drop > 0
    text = (f"clean acc {100 * points[bounds[0]]['clean']:.1f} % at b={bounds[0]:g} vs "
            f"{100 * points[bounds[-1]]['clean']:.1f} % at b={bounds[-1]:g}; at {top}: best b={best:g} "
            f"({100 * points[best][top]:.1f} %) vs {100 * points[bounds[-1]][top]:.1f} % at b={bounds[-1]:g}")
    return text, holds, points


def neuron_spread(exp: Experiment) -> tuple[str, bool | None, dict]:
    """Fig. 2: most neurons' maxima lie far below the layer maximum."""
    for job in sorted(exp.jobs, key=lambda j: (j.model != "vgg16", j.protection != "none")):
        prof = exp.artifact(job.run_id, "profile_site.json")
        if not prof:
            continue
        maxima = [float(v) for v in prof["maxima"]]
        layer = max(maxima)
        median = statistics.median(maxima)
        below_half = sum(v < layer / 2 for v in maxima) / len(maxima)
        data = {"model": job.model, "site": prof["site"], "neurons": len(maxima), "layer_max": layer,
                "median": median, "below_half": below_half, "run_id": job.run_id}
        return (f"{job.model} site {prof['site']}: layer max {layer:.2f}, median neuron max {median:.2f} "
                f"({median / layer:.0%} of it); {below_half:.0%} of {len(maxima)} neurons below half the "
                f"layer max", below_half >= 0.5, data)
    return "no profile_site.json", None, {}


def overheads(table_csv: Path) -> tuple[list[tuple], dict]:
    """Table I's claims; an experiment run without overhead.enabled (the fault-model ones) has none."""
    rows = [r for r in read_table(table_csv) if r["protection"] == "fitact"] if table_csv.exists() else []
    out = {r["model"]: {k: float(r[k]) for k in ("runtime_overhead", "memory_overhead", "posttrain_overhead",
                                                  "train_time_s", "posttrain_time_s")} for r in rows}
    runtime = "; ".join(f"{m}: {100 * v['runtime_overhead']:+.1f} %" for m, v in sorted(out.items()))
    memory = "; ".join(f"{m}: {100 * v['memory_overhead']:+.2f} %" for m, v in sorted(out.items()))
    post = "; ".join(f"{m}: {v['posttrain_time_s']:.0f} s / {v['train_time_s']:.0f} s = "
                     f"{100 * v['posttrain_overhead']:.1f} %" for m, v in sorted(out.items()))
    return [
        ("Inference runtime overhead of FitAct (Table I)", "+4.54 % to +11.11 %", runtime,
         all(v["runtime_overhead"] <= 0.1111 for v in out.values()) if out else None),
        ("Inference memory overhead of FitAct (Table I)", "+0.64 % to +5.36 %", memory,
         all(v["memory_overhead"] <= 0.0536 for v in out.values()) if out else None),
        ("Post-training time / baseline training time", "5.9 % to 6.7 %", post,
         all(v["posttrain_overhead"] <= 0.05 for v in out.values()) if out else None),
    ], out


def bound_shrink(exp: Experiment) -> tuple[str, bool | None, dict]:
    data = {j.model: j.metrics.get("mean_bound_ratio") for j in exp.jobs if j.protection == "fitact"}
    data = {k: v for k, v in data.items() if v is not None}
    if not data:
        return "no post-training metrics", None, {}
    return "; ".join(f"{m}: {v:.3f}" for m, v in sorted(data.items())), all(v < 1 for v in data.values()), data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="mlruns/mlflow.db")
    ap.add_argument("--experiment", default="repro_cpu")
    ap.add_argument("--fig1", default="repro_cpu_fig1")
    ap.add_argument("--report-dir", default=None, help="default: outputs/figures/<experiment>")
    ap.add_argument("--min-rate", type=float, default=1e-6)
    ap.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate of each claims table (Holm)")
    ap.add_argument("--margin", type=float, default=0.01, help="equivalence margin of a tie, accuracy fraction "
                    "(0.01 = 1 point)")
    ap.add_argument("--test", choices=claims.TESTS, default=claims.DEFAULT_TEST,
                    help="bounded: the bounded-mean test the paired interval shown inverts (any distribution); "
                    "t: paired t-test on the mean difference (asymptotic); wilcoxon: signed-rank")
    args = ap.parse_args()
    if not 0 < args.alpha < 1 or not args.margin > 0:
        sys.exit(f"--alpha={args.alpha} must lie in (0, 1) and --margin={args.margin} must be positive")
    report_dir = Path(args.report_dir or f"outputs/figures/{args.experiment}")
    client = MlflowClient(f"sqlite:///{Path(args.store).resolve()}")
    with tempfile.TemporaryDirectory() as tmp:
        exp = load(client, args.experiment, Path(tmp))
        if exp is None:
            sys.exit(f"no MLflow experiment named {args.experiment!r} in {args.store}")
        fig1 = load(client, args.fig1, Path(tmp))
        trials = trial_accuracies(exp.jobs, exp.trials)
        print(f"## Baselines of `{args.experiment}`\n")
        print("\n".join(baselines_table(exp)) + "\n")
        print(f"## Runs of `{args.experiment}` (mean test accuracy, %, per fault rate)\n")
        print("\n".join(runs_table(exp)) + "\n")
        report(args, exp, fig1, trials, report_dir)


def report(args, exp: Experiment, fig1: Experiment | None, trials: dict, report_dir: Path) -> None:
    """The tables after the runs: variants vs FitAct, the ordering tests, the claims."""
    note = claims.method_note(args.alpha, args.margin, args.test)
    found = [("The unprotected model collapses at high fault rates", "collapse at 3e-5 (full width)",
              *collapse(exp)[:2])]
    text, ok, order, order_table = ordering(trials, args.min_rate, args.alpha, args.test)
    found.append((f"FitAct > Clip-Act > Ranger > unprotected at every rate >= {args.min_rate:.0e} "
                  f"(one-sided {args.test} test, Holm)", "ordering at every rate", text, ok))
    found.append(("GBReLU bound trade-off (Fig. 1)", "a bound between too tight and too loose is best",
                  *gbrelu_tradeoff(fig1)[:2]))
    found.append(("Per-neuron maxima spread far below the layer max (Fig. 2)", "wide spread",
                  *neuron_spread(exp)[:2]))
    rows, over = overheads(report_dir / "table1_overhead.csv")
    found.extend(rows)
    found.append(("Post-training shrinks the bounds (mean bound / profiled max)", "< 1", *bound_shrink(exp)[:2]))
    variants, versus = versus_fitact(trials, args.margin, args.alpha, args.test)
    if variants:
        print("## Variants vs FitAct (accuracy points, variant - FitAct on the same trials, paired 95 % CI: "
              f"the one the {args.test} test inverts, claims.shown_interval)\n")
        print("\n".join(variants) + "\n")
        print("`>`: variant > FitAct supported; `<`: FitAct > variant supported; `=`: a tie within "
              f"+-{100 * args.margin:g} points supported; `?`: none of these. {note}\n")
        print("## Variants: bound memory and bounds-training time\n")
        print("\n".join(variant_costs(report_dir / "table1_overhead.csv")) + "\n")
        proact = [cell for name, per_rate in versus.items() if name.endswith(": proact") for cell in per_rate.values()]
        if proact:
            better, worse = sum(c["better"] for c in proact), sum(c["worse"] for c in proact)
            found.append(("ProAct is more resilient than neuron-wise FitAct (arXiv 2406.06313)",
                          "up to 6.4x better resilience", f"ProAct > FitAct supported at {better}/{len(proact)} "
                          f"(model, rate) points, FitAct > ProAct at {worse}", better > 0 and worse == 0))
    if order_table:
        print(f"## Ordering claims, one per (model, pair, rate >= {args.min_rate:.0e})\n\n{note}\n")
        print("\n".join(order_table) + "\n")
    print("## Claims\n\n| claim | paper | ours | holds? |\n|---|---|---|---|")
    for name, paper, ours, ok in found:
        print(f"| {name} | {paper} | {ours} | {'-' if ok is None else ('yes' if ok else 'no')} |")
    print(json.dumps({"claims": {c[0]: c[3] for c in found}, "tests": note, "ordering": order,
                      "overheads": over, "versus_fitact": versus}))


if __name__ == "__main__":
    main()
