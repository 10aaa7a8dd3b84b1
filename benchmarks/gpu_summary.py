"""Tables from gpu_paper_scale.py's results.jsonl: per model the training (epochs, time, clean test
accuracy), and per protection and rate unit the mean accuracy under faults with its 95 % CI.

    python benchmarks/gpu_summary.py gpu_out/results.jsonl
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def read(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def tables(records: list[dict]) -> str:
    train = {r["model"]: r for r in records if r["kind"] == "train"}
    clean = {r["model"]: r for r in records if r["kind"] == "clean"}
    lines = ["| model | params | epochs | train time (s) | test accuracy (%) |", "|---|---|---|---|---|"]
    for model, t in train.items():
        acc = clean.get(model, {}).get("test_accuracy", float("nan"))
        lines.append(f"| {model} | {t['params']:,} | {t['epochs_run']} | {t['train_time_s']:.1f} | {100 * acc:.2f} |")
    campaigns = [r for r in records if r["kind"] == "campaign"]
    rates = sorted({float(k) for r in campaigns for k in r["per_rate"]})
    lines += ["", "| model | protection | unit | maps x images | clean (%) | " + " | ".join(f"{r:.0e}" for r in rates)
              + " | time (s) |", "|---|---|---|---|---|" + "---|" * len(rates) + "---|"]
    for r in campaigns:
        by_rate = {float(k): v for k, v in r["per_rate"].items()}
        cells = [f"{100 * by_rate[x]['mean']:.1f} ± {100 * by_rate[x]['ci_halfwidth']:.1f}" if x in by_rate else "-"
                 for x in rates]
        lines.append(f"| {r['model']} | {r['protection']} | per {r['unit']} | {r['maps']} x {r['images']} | "
                     f"{100 * r['clean_accuracy']:.2f} | " + " | ".join(cells) + f" | {r['time_s']:.1f} |")
    skipped = [r for r in records if r["kind"] in ("skip", "error")]
    lines += [""] + [f"- {r['kind']}: {json.dumps({k: v for k, v in r.items() if k != 'kind'})}" for r in skipped]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(tables(read(sys.argv[1] if len(sys.argv) > 1 else "gpu_out/results.jsonl")), end="")
