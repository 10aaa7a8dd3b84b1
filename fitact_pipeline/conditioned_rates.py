"""acc(rate) and its interval for any rates from a conditioned campaign's a_k table (the run's
conditioned_ak.json artifact; docs/campaigns.md, "Count-conditioned campaigns"), and the rate at
which the accuracy first falls a given loss below the clean accuracy:

    python -m fitact_pipeline.conditioned_rates conditioned_ak.json 1e-10 1e-9 1e-8 1e-7 [--level 0.99]
    python -m fitact_pipeline.conditioned_rates run1/conditioned_ak.json run2/conditioned_ak.json --loss 0.01
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .faults.conditioned import acc_at_rate, rate_at_loss


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", nargs="+", help="conditioned_ak.json files, then the rates (numbers)")
    ap.add_argument("--level", type=float, default=None, help="interval level (default: the campaign's)")
    ap.add_argument("--loss", type=float, default=None,
                    help="print, per table, the rate at which acc first falls this much (fraction) below clean")
    args = ap.parse_args(argv)
    tables, rates = [], []
    for item in args.table:  # files first, then numbers: one positional list, split by what parses
        try:
            rates.append(float(item))
        except ValueError:
            if rates:
                sys.exit(f"conditioned_rates: {item!r} after the rates is not allowed; give the tables first, then rates")
            tables.append(item)
    if not tables:
        sys.exit("conditioned_rates: no table given; the first argument is a conditioned_ak.json")
    if not rates and args.loss is None:
        sys.exit("conditioned_rates: no rates given and no --loss; give rates (e.g. 1e-9 1e-8) or --loss 0.01")
    for path in tables:
        with open(path) as fh:
            table = json.load(fh)
        if len(tables) > 1:
            print(path)
        if rates:
            print("rate      mean %    interval %            tail mass  interpolation term %")
        for rate in rates:
            r = acc_at_rate(table, rate, args.level)
            print(f"{rate:<9.3g} {100 * r['mean']:8.3f}  [{100 * r['ci_low']:8.3f}, {100 * r['ci_high']:8.3f}]  "
                  f"{r['tail_mass']:.2e}   {100 * r['interp_term']:.3f}")
        if args.loss is not None:
            r = rate_at_loss(table, args.loss, level=args.level)
            print(f"loss of {100 * args.loss:g} point(s) below clean {100 * r['clean']:.3f} %: rate {r['rate']:.3g} "
                  f"[{r['rate_low']:.3g}, {r['rate_high']:.3g}] (pointwise intervals inverted on a log grid)")


if __name__ == "__main__":
    main()
