"""acc(rate) and its interval for any rates from a conditioned campaign's a_k table (the run's
conditioned_ak.json artifact; docs/campaigns.md, "Count-conditioned campaigns"):

    python -m fitact_pipeline.conditioned_rates conditioned_ak.json 1e-10 1e-9 1e-8 1e-7 [--level 0.99]
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from .faults.conditioned import acc_at_rate


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", help="a conditioned campaign's conditioned_ak.json")
    ap.add_argument("rates", nargs="+", type=float)
    ap.add_argument("--level", type=float, default=None, help="interval level (default: the campaign's)")
    args = ap.parse_args(argv)
    with open(args.table) as fh:
        table = json.load(fh)
    print("rate      mean %    interval %            tail mass")
    for rate in args.rates:
        r = acc_at_rate(table, rate, args.level)
        print(f"{rate:<9.3g} {100 * r['mean']:8.3f}  [{100 * r['ci_low']:8.3f}, {100 * r['ci_high']:8.3f}]  "
              f"{r['tail_mass']:.2e}")


if __name__ == "__main__":
    main()
