"""The count-conditioned design: the estimator and its interval, maps with exactly k faults, the campaign."""
import copy
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from fitact_pipeline.evaluate import evaluate_accuracy
from fitact_pipeline.faults import FaultInjector, run_campaign
from fitact_pipeline.faults import conditioned as est
from fitact_pipeline.faults.conditioned_campaign import allocate, cell_trial_id, check_conditioned_config
from fitact_pipeline.faults.designs import DESIGNS
from fitact_pipeline.faults.exact_count import exact_map, part_fields, part_sizes
from fitact_pipeline.faults.sampler import BitFlips, Bursts, StuckBits
from fitact_pipeline.registry import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def geometric_cells(n_bits, rate, eps, decay=0.8, clean=0.9, n=1e6):
    """Cells whose a_k = clean * decay^k is known exactly (sd 0): acc(p) = clean (1 - (1 - decay) p)^N."""
    keys = est.cells_for_rates(n_bits, 0, [rate], eps)
    return [est.Cell(k, j, n, clean * decay ** k, 0.0) for k, j in keys], keys


@pytest.mark.parametrize("rate", [1e-7, 1e-6, 1e-5, 3e-5])
def test_estimate_equals_closed_form_when_a_k_known(rate):
    n_bits = 300_000
    cells, keys = geometric_cells(n_bits, rate, 1e-9)
    out = est.estimate(cells, est.cell_weights(keys, n_bits, 0, rate))
    truth = 0.9 * (1 - 0.2 * rate) ** n_bits
    assert out["tail_mass"] <= 1e-9
    assert out["mean"] == pytest.approx(truth, abs=1e-9)
    assert out["ci_low"] <= truth <= out["ci_high"]


def test_truncation_bound_contains_the_truth_and_is_the_tail_mass():
    n_bits, rate = 300_000, 1e-5  # K has mean 3: cells 0..2 leave a real tail
    keys = [(0, 0), (1, 0), (2, 0)]
    cells = [est.Cell(k, 0, 1e6, 0.9 * 0.8 ** k, 0.0) for k, _ in keys]
    out = est.estimate(cells, est.cell_weights(keys, n_bits, 0, rate))
    truth = 0.9 * (1 - 0.2 * rate) ** n_bits
    tail = sps.binom.sf(2, n_bits, rate)
    assert out["tail_mass"] == pytest.approx(tail, rel=1e-9) and tail > 0.5
    assert out["ci_low"] <= truth <= out["ci_high"]
    assert out["ci_high"] - out["ci_low"] == pytest.approx(tail, rel=1e-9)  # no sampling error: the bound alone


def test_welch_degrees_of_freedom():
    # two cells of equal variance and size n: 2 (n - 1); one dominant cell: its own n - 1
    assert est.welch_df(np.array([1.0, 1.0]), np.array([10.0, 10.0])) == pytest.approx(18)
    assert est.welch_df(np.array([1.0, 1e-12]), np.array([10.0, 50.0])) == pytest.approx(9, rel=1e-6)


def test_interval_covers_over_simulated_campaigns():
    """Per-map accuracies drawn around known a_k (5 maps a cell): the interval covers acc(p) about 95 %
    of the time."""
    rng = np.random.default_rng(0)
    n_bits, rate, decay = 200_000, 1e-5, 0.9
    keys = est.cells_for_rates(n_bits, 0, [rate], 1e-4)
    w = est.cell_weights(keys, n_bits, 0, rate)
    truth = 0.95 * (1 - (1 - decay) * rate) ** n_bits  # sum_k P(K = k) 0.95 decay^k
    hits = 0
    for _ in range(1000):
        cells = [est.Cell(0, 0, np.inf, 0.95, 0.0)]
        cells += [est.cell_summary(k, 0, rng.normal(0.95 * decay ** k, 0.05 + 0.02 * k, size=5)) for k, _ in keys[1:]]
        out = est.estimate(cells, w)
        hits += out["ci_low"] <= truth <= out["ci_high"]
    assert 0.93 <= hits / 1000 <= 0.975


def test_large_own_counts_are_refused_with_the_rate_and_the_limit():
    # the shared count of 1e-3 over 1e6 units gets a grid; an own part that large is refused
    assert len(est.cells_for_rates(1_000_000, 0, [1e-7, 1e-3], 1e-3)) > 1
    with pytest.raises(ValueError, match=r"^campaign.rates: rate 0.001 .*own fault count .*limit is 64.*nested design$"):
        est.cells_for_rates(1_000_000, 1_000_000, [1e-7, 1e-3], 1e-3)


def grid_table(n_bits, rates, a_of_k, eps=1e-6, n=1e9, sd=0.0, grid_nodes=est.GRID_NODES):
    """An a_k table as a campaign at ``rates`` would log it, every cell (checks included) holding the
    known a_k (sd as given, n maps)."""
    nodes = est.cells_for_rates(n_bits, 0, rates, eps, grid_nodes=grid_nodes)
    checks = est.check_cells(nodes, est.grid_spans(n_bits, 0, rates, eps))
    cells = [est.Cell(k, j, np.inf if (k, j) == (0, 0) else n, a_of_k(k), 0.0 if (k, j) == (0, 0) else sd,
                      "check" if (k, j) in checks else "node") for k, j in sorted(nodes + checks)]
    return json.loads(json.dumps(est.ak_table(cells, n_bits, 0, 0.95))), nodes, checks


def truth(n_bits, rate, a_of_k):
    k = np.arange(0, n_bits + 1) if n_bits < 10_000 else np.arange(0, int(n_bits * rate * 3 + 200))
    return float(sps.binom.pmf(k, n_bits, rate) @ a_of_k(k))


def test_grid_interpolation_is_exact_for_a_linear_a_k():
    n_bits, rate = 900_000, 3e-4  # K ~ 270 +- 16: a grid
    a = lambda k: 0.95 - 0.001 * np.asarray(k, dtype=np.float64)
    table, nodes, checks = grid_table(n_bits, [rate], a)
    assert len(nodes) == est.GRID_NODES and len(checks) == est.GRID_NODES - 1
    out = est.acc_at_rate(table, rate)
    assert out["interp_check"] == pytest.approx(0, abs=1e-12) and out["interp_term"] == pytest.approx(0, abs=1e-12)
    assert out["tail_mass"] <= 1e-6
    assert out["mean"] == pytest.approx(truth(n_bits, rate, a), abs=2e-6)
    assert out["ci_low"] <= truth(n_bits, rate, a) <= out["ci_high"]


def test_grid_check_term_is_positive_and_covers_a_convex_a_k():
    n_bits, rate = 900_000, 3e-4
    a = lambda k: 0.95 * np.exp(-np.asarray(k, dtype=np.float64) / 40.0)  # convex: interpolation above the truth
    table, nodes, checks = grid_table(n_bits, [rate], a)
    out = est.acc_at_rate(table, rate)
    exact = truth(n_bits, rate, a)
    # the linear interpolant of a convex function lies above it: the estimate is high, by less than the term
    assert out["interp_term"] > 0 and out["mean"] > exact
    assert out["mean"] - exact < out["interp_term"]
    assert out["ci_low"] <= exact <= out["ci_high"]
    assert est.monotonicity(table) == {"pairs": len(table["cells"]) - 1, "rises": 0, "significant_rises": 0}
    # a coarser grid: larger gaps, larger checked deviation
    coarse = est.acc_at_rate(grid_table(n_bits, [rate], a, grid_nodes=4)[0], rate)
    assert coarse["interp_term"] > out["interp_term"] and coarse["ci_low"] <= exact <= coarse["ci_high"]


def test_grid_rates_leave_the_exact_cells_of_small_rates_alone():
    n_bits = 900_000
    small = est.cells_for_rates(n_bits, 0, [1e-6, 1e-5], 1e-4)
    both = est.cells_for_rates(n_bits, 0, [1e-6, 1e-5, 3e-4], 1e-4)
    assert set(small) <= set(both)
    checks = est.check_cells(both, est.grid_spans(n_bits, 0, [1e-6, 1e-5, 3e-4], 1e-4))
    assert checks and min(k for k, _ in checks) > max(k for k, _ in small)  # gaps of small rates are not interpolated
    assert est.check_cells(small, est.grid_spans(n_bits, 0, [1e-6, 1e-5], 1e-4)) == []
    # without checked gaps the weights are the binomial probabilities themselves
    w, mass = est.rate_weights(small, ["node"] * len(small), n_bits, 0, [1e-5])
    assert mass.shape == (1, 0) and np.array_equal(w[0], est.cell_weights(small, n_bits, 0, 1e-5))


def test_grid_interval_covers_over_simulated_campaigns():
    """Cells of 2000 maps (per-map sd 0.15) around a convex a_k: the grid interval (sampling +
    interpolation term) covers acc(p) at least 95 % of the time, and is not trivially wide."""
    rng = np.random.default_rng(2)
    n_bits, rate, n, sd = 900_000, 1e-4, 2000, 0.15
    a = lambda k: 0.95 * np.exp(-np.asarray(k, dtype=np.float64) / 60.0)
    table, nodes, checks = grid_table(n_bits, [rate], a, eps=1e-4)
    exact = truth(n_bits, rate, a)
    hits, terms, widths = 0, [], []
    for _ in range(400):
        rows = [dict(c) for c in table["cells"]]
        for c in rows:
            if c["k"]:
                c.update(n=n, mean=float(rng.normal(c["mean"], sd / math.sqrt(n))),
                         sd=float(sd * math.sqrt(rng.chisquare(n - 1) / (n - 1))))
        out = est.acc_at_rate({**table, "cells": rows}, rate)
        hits += out["ci_low"] <= exact <= out["ci_high"]
        terms.append(out["interp_term"])
        widths.append(out["ci_halfwidth"])
    assert hits / 400 >= 0.95 and np.mean(terms) > 0 and np.mean(widths) < 0.025


def test_rate_at_loss_on_a_known_a_k():
    # a_k = clean - 0.002 k (linear): acc(p) = clean - 0.002 N p, so a 1-point loss at p = 5 / N
    n_bits, clean = 900_000, 0.95
    a = lambda k: clean - 0.002 * np.asarray(k, dtype=np.float64)
    rates = list(np.geomspace(1e-9, 1e-4, 11))
    table, _, _ = grid_table(n_bits, rates, a, eps=1e-6)
    got = est.rate_at_loss(table, 0.01, points=401)
    assert got["rate"] == pytest.approx(5 / n_bits, rel=0.01)
    assert got["rate_low"] <= 5 / n_bits <= got["rate_high"] and got["rate_high"] / got["rate_low"] < 1.2
    # noisy cells widen the interval around the same answer
    noisy = {**table, "cells": [dict(c, n=5, sd=0.05) if c["k"] else c for c in table["cells"]]}
    wide = est.rate_at_loss(noisy, 0.01, points=401)
    assert wide["rate_low"] < got["rate_low"] and wide["rate_high"] > got["rate_high"]
    assert wide["rate_low"] <= 5 / n_bits <= wide["rate_high"]
    assert est.rate_at_loss(table, 0.5)["rate"] == math.inf  # never reached within the grid
    with pytest.raises(ValueError, match=r"^loss=1 is not allowed"):
        est.rate_at_loss(table, 1)


def test_cells_carry_all_but_eps_of_every_rate():
    rates = [1e-8, 1e-6, 3e-6, 1e-5]
    keys = est.cells_for_rates(400_000, 30_000, rates, 1e-4)
    for rate in rates:
        assert est.cell_weights(keys, 400_000, 30_000, rate).sum() >= 1 - 1e-4
    windows = [est.count_window(n, 1e-5, 1e-4 / 2) for n in (400_000, 30_000)]
    product = (windows[0][1] - windows[0][0] + 1) * (windows[1][1] - windows[1][0] + 1)
    assert (0, 0) in keys and len(keys) < 0.8 * product  # the heaviest cells only, not the windows' product


def test_acc_at_rate_reads_a_logged_table():
    keys = est.cells_for_rates(100_000, 0, [1e-6, 1e-5], 1e-6)
    cells = [est.Cell(0, 0, np.inf, 0.9, 0.0)] + [est.Cell(k, 0, 20, 0.9 - 0.05 * k, 0.03) for k, _ in keys[1:]]
    table = json.loads(json.dumps(est.ak_table(cells, 100_000, 0, 0.95)))
    for rate in (1e-6, 1e-5):
        direct = est.estimate(cells, est.cell_weights(keys, 100_000, 0, rate))
        assert est.acc_at_rate(table, rate) == pytest.approx(direct)
    assert est.acc_at_rate(table, 0.0)["mean"] == 0.9
    far = est.acc_at_rate(table, 1e-3)  # K ~ 100: nothing measured there, the tail holds it all
    assert far["tail_mass"] > 0.99 and far["ci_low"] == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="rate=2"):
        est.acc_at_rate(table, 2)


@pytest.fixture(scope="module")
def models(small_protected):
    return small_protected(90, 5, ("none", "ranger", "fitact"))


def _bit_ids(injector, fmap):
    space = injector.space
    fid = torch.tensor([space.field_id[n] for n in fmap.names])[fmap.field_idx]
    return space.field_bit_offset[fid] + fmap.elements * space.field_bits[fid] + fmap.bits


def test_exactly_k_distinct_shared_and_j_own_bits(models):
    nets, _, _ = models
    injector = FaultInjector(copy.deepcopy(nets["fitact"]))
    own = {injector.space.fields[i].name for i in part_fields(injector.space)["own"]}
    for k, j, trial in [(0, 0, 0), (1, 0, 3), (7, 2, 1), (200, 40, 9)]:
        fmap = exact_map(injector, k, j, 5, trial)
        in_own = sum(fmap.names[f] in own for f in fmap.field_idx.tolist())
        assert (len(fmap) - in_own, in_own) == (k, j)
        assert len(set(_bit_ids(injector, fmap).tolist())) == k + j
        with injector.apply(fmap):  # a valid map: in range, no repeated bit
            pass
    again = exact_map(injector, 7, 2, 5, 1)
    assert again.records == exact_map(injector, 7, 2, 5, 1).records != exact_map(injector, 7, 2, 5, 2).records


def test_exact_k_faults_are_uniform_over_the_shared_tensors(models):
    nets, _, _ = models
    injector = FaultInjector(copy.deepcopy(nets["fitact"]))
    space = injector.space
    shared = part_fields(space)["shared"]
    counts = np.zeros(len(space.fields))
    bits = np.zeros(32)
    for trial in range(600):
        fmap = exact_map(injector, 5, 0, 1, trial)
        for name, _, bit in fmap.records:
            counts[space.field_id[name]] += 1
            bits[bit] += 1
    expected = space.field_n_bits[shared] / space.field_n_bits[shared].sum() * 3000
    assert counts.sum() == counts[shared].sum() == 3000
    assert sps.chisquare(counts[shared], expected).pvalue > 1e-3
    assert sps.chisquare(bits).pvalue > 1e-3


def test_shared_faults_pair_across_protections(models):
    nets, _, _ = models
    inj = {name: FaultInjector(copy.deepcopy(net)) for name, net in nets.items()}
    assert part_sizes(inj["none"].space, inj["none"].sampler)[1] == 0
    assert len({part_sizes(i.space, i.sampler)[0] for i in inj.values()}) == 1
    for trial in range(5):
        plain = exact_map(inj["none"], 4, 0, 2, trial).records
        assert exact_map(inj["ranger"], 4, 0, 2, trial).records == plain
        assert exact_map(inj["fitact"], 4, 0, 2, trial).records == plain
        shared = [r for r in exact_map(inj["fitact"], 4, 3, 2, trial).records if not r[0].endswith("bound")]
        assert shared == [r for r in exact_map(inj["ranger"], 4, 3, 2, trial).records if not r[0].endswith("bound")]


def test_stuck_at_and_burst_maps_with_exactly_k_faults(models):
    nets, _, _ = models
    burst = FaultInjector(copy.deepcopy(nets["none"]), sampler=Bursts(3))
    fmap = exact_map(burst, 6, 0, 0, 1)
    assert len(fmap) == 18 and len(set(zip(fmap.field_idx.tolist(), fmap.elements.tolist()))) == 6
    assert part_sizes(burst.space, burst.sampler)[0] == int(burst.space.field_numel.sum())  # a per-word rate
    stuck = FaultInjector(copy.deepcopy(nets["none"]), sampler=StuckBits("mix"))
    fmap = exact_map(stuck, 40, 0, 0, 1)
    assert len(fmap) == 40 and set(fmap.values.tolist()) == {0, 1}


def test_per_word_rates_hit_k_distinct_words_and_toolbox_counts_are_refused(models):
    nets, _, _ = models

    class WordFlips(BitFlips):  # memory with a per-word rate: one uniform bit of each hit word
        unit = "word"

    class ToolboxFlips(BitFlips):
        unit = "toolbox"

    injector = FaultInjector(copy.deepcopy(nets["fitact"]), sampler=WordFlips())
    assert part_sizes(injector.space, injector.sampler) == tuple(
        int(injector.space.field_numel[part_fields(injector.space)[p]].sum()) for p in ("shared", "own"))
    fmap = exact_map(injector, 30, 4, 0, 2)
    assert len(fmap) == 34 and len(set(zip(fmap.field_idx.tolist(), fmap.elements.tolist()))) == 34
    assert 0 <= int(fmap.bits.min()) and int(fmap.bits.max()) < 32 and len(set(fmap.bits.tolist())) > 5
    with pytest.raises(ValueError, match="^rate unit 'toolbox' is not allowed with the conditioned design"):
        part_sizes(injector.space, ToolboxFlips())
    with pytest.raises(ConfigError, match=r"^faults.rate_unit='toolbox' is not allowed"):
        check_conditioned_config({"design": "conditioned", "trials": 2}, {"model": "memory", "rate_unit": "toolbox"})


def test_conditioned_campaign_replays_its_cells_and_answers_any_rate(models):
    nets, images, labels = models
    model = copy.deepcopy(nets["fitact"])
    adaptive = {"target_halfwidth": 0.02, "min_trials": 2, "max_trials": 30}
    run = lambda: run_campaign(model, FaultInjector(model), images, labels, [1e-7, 1e-6, 1e-5], trials=2, seed=3,
                               batch_size=45, adaptive=adaptive, progress=False, design="conditioned",
                               images_per_trial=30)
    result = run()
    table = result.ak_table
    assert result.per_rate == run().per_rate  # same config and seed: same numbers
    reference = copy.deepcopy(nets["fitact"])
    injector = FaultInjector(reference)
    for key, accs in list(table["trials"].items())[:4]:
        k, j = map(int, key.split(","))
        for t, acc in enumerate(accs):
            ids = DESIGNS["nested"].trial_images(labels, 30, 3, cell_trial_id(k, j, t))
            with injector.apply(exact_map(injector, k, j, 3, t)):
                assert acc == evaluate_accuracy(reference, images[ids], labels[ids], 45)
    for rate, stats in result.per_rate.items():
        logged = {k: v for k, v in stats.items() if k != "images_per_trial"}
        assert est.acc_at_rate(table, rate) == pytest.approx(logged)
        assert stats["tail_mass"] <= 0.2 * 0.02
    assert result.per_rate[1e-7]["ci_low"] <= result.clean_accuracy <= result.per_rate[1e-7]["ci_high"] + 1e-3


def test_conditioned_design_needs_a_stored_parameter_fault_model():
    with pytest.raises(ConfigError, match=r"^campaign.design='conditioned' is not allowed; needs a stored-parameter"):
        check_conditioned_config({"design": "conditioned"}, {"model": "activation"})
    check_conditioned_config({"design": "conditioned", "trials": 2}, {"model": "stuck_at"})
    with pytest.raises(ConfigError, match=r"^campaign.trials=1 is not allowed; the conditioned design needs at least"):
        check_conditioned_config({"design": "conditioned", "trials": 1}, {"model": "memory"})
    check_conditioned_config({"design": "conditioned", "trials": 1, "adaptive": {"enabled": True}}, {"model": "memory"})
    check_conditioned_config({"design": "nested"}, {"model": "activation"})


def test_conditioned_design_needs_whole_images_per_trial():
    from fitact_pipeline.faults import check_campaign_config
    with pytest.raises(ConfigError, match=r"^campaign.images_per_trial='auto' is not allowed; the conditioned"):
        check_campaign_config({"rates": [1e-7], "design": "conditioned", "images_per_trial": "auto"})
    check_campaign_config({"rates": [1e-7], "design": "conditioned", "images_per_trial": 20})


def test_allocation_stops_at_the_target_and_follows_the_shares():
    rng = np.random.default_rng(1)
    n_bits, rates = 200_000, [1e-6, 1e-5]
    keys = est.cells_for_rates(n_bits, 0, rates, 1e-3)
    weights = np.stack([est.cell_weights(keys, n_bits, 0, r) for r in rates])
    draw = lambda cell, t: float(np.clip(rng.normal(0.95 - 0.01 * cell[0], 0.1), 0, 1))
    accs = allocate(keys, weights, 0.95, draw, 3, 10_000, 0.005, 0.95, 1 / 30)
    cells = [est.Cell(0, 0, np.inf, 0.95, 0.0)] + [est.cell_summary(*c, accs[c]) for c in keys[1:]]
    widths = [est.estimate(cells, w)["ci_halfwidth"] for w in weights]
    assert max(widths) <= 0.005 and sum(map(len, accs.values())) < 10_000
    # Neyman shares w_c sqrt(k) at the binding rate (1e-5, K ~ 2): K = 2 gets more maps than K = 6
    assert len(accs[(2, 0)]) > len(accs[(6, 0)]) >= 3
    capped = allocate(keys, weights, 0.95, draw, 3, 200, 0.001, 0.95, 1 / 30)
    assert sum(map(len, capped.values())) == 200


def test_conditioned_rates_prints_any_rate_of_a_table(tmp_path, capsys):
    from fitact_pipeline.conditioned_rates import main
    keys = est.cells_for_rates(100_000, 0, [1e-6], 1e-6)
    cells = [est.Cell(0, 0, np.inf, 0.9, 0.0)] + [est.Cell(k, 0, 20, 0.8, 0.03) for k, _ in keys[1:]]
    path = tmp_path / "conditioned_ak.json"
    path.write_text(json.dumps(est.ak_table(cells, 100_000, 0, 0.95)))
    main([str(path), "1e-9", "1e-6"])
    lines = capsys.readouterr().out.splitlines()
    expected = est.acc_at_rate(json.loads(path.read_text()), 1e-6)
    assert len(lines) == 3 and lines[2].split()[1] == f"{100 * expected['mean']:.3f}"
    main([str(path), "--loss", "0.01"])
    line = capsys.readouterr().out.strip()
    got = est.rate_at_loss(json.loads(path.read_text()), 0.01)
    assert line.startswith("loss of 1 point(s) below clean 90.000 %: rate ") and f"{got['rate']:.3g} " in line
    with pytest.raises(SystemExit, match="no rates given and no --loss"):
        main([str(path)])


def test_conditioned_campaign_refuses_faults_drawn_per_pass(models):
    from fitact_pipeline.faults import ActivationInjector
    nets, images, labels = models
    model = copy.deepcopy(nets["none"])
    with pytest.raises(ValueError, match="stored-parameter fault model"):
        run_campaign(model, ActivationInjector(model), images, labels, [1e-7], 2, 0, 45, progress=False,
                     design="conditioned", images_per_trial=10)


def test_prefix_reuse_gives_the_full_pass_predictions(models):
    from fitact_pipeline.faults.prefix import PrefixCache
    nets, images, labels = models
    for name in ("none", "fitact"):
        model = copy.deepcopy(nets[name])
        injector = FaultInjector(model)
        cache = PrefixCache.build(model, images, 45)
        assert cache is not None and cache.ideal_saving(0) == 0 and cache.ideal_saving(len(cache.stages)) == 1
        starts = set()
        for trial in range(12):
            ids = DESIGNS["nested"].trial_images(labels, 40, 0, trial)
            with injector.inject_sampled(exact_map(injector, 2, 1 if name == "fitact" else 0, 0, trial)) as fmap:
                start = cache.first_stage(fmap)
                full = evaluate_accuracy(model, images[ids], labels[ids], 45)
                assert int(cache.correct(start, ids, labels[ids]).sum()) / 40 == full
                starts.add(start)
            assert start == min(cache.stage_of(n) for n, *_ in fmap.records)
        assert len(starts) > 1  # maps start at different stages


def test_conditioned_campaign_with_a_large_k_rate_keeps_the_small_rates_cells(models):
    nets, images, labels = models
    model = copy.deepcopy(nets["fitact"])
    run = lambda rates: run_campaign(model, FaultInjector(model), images, labels, rates, trials=2, seed=5,
                                     batch_size=45, progress=False, design="conditioned", images_per_trial=20)
    n_shared, n_own = part_sizes(FaultInjector(model).space, FaultInjector(model).sampler)
    big = 100 / n_shared  # K ~ 100: a window of more than 64 counts, so a grid
    small, both = run([1e-6]), run([1e-6, big])
    table = both.ak_table
    checks = [c for c in table["cells"] if c.get("role") == "check"]
    assert checks and all(c["k"] > 20 for c in checks)
    # the small rate's cells: the same maps, the same accuracies, the same estimate
    for key, accs in small.ak_table["trials"].items():
        assert table["trials"][key] == accs
    alone = {k: v for k, v in small.per_rate[1e-6].items() if k != "trials"}  # trials: the whole campaign's maps
    assert {k: both.per_rate[1e-6][k] for k in alone} == pytest.approx(alone, rel=1e-12, abs=1e-15)
    logged = {k: v for k, v in both.per_rate[big].items() if k != "images_per_trial"}
    assert est.acc_at_rate(table, big) == pytest.approx(logged)
    assert logged["interp_term"] > 0 and logged["ci_low"] <= logged["mean"] <= logged["ci_high"]


def test_preflight_refuses_a_rate_the_design_cannot_measure_before_any_work(tmp_path):
    """FitAct's neuron-wise bounds at a high rate: its own fault count spans more values than the
    design measures; the sweep is refused at preflight (the skeleton's fault space), not after its
    jobs trained, profiled and post-trained."""
    from fitact_pipeline.validate import preflight
    sweep = ["-m", "experiment=quickstart", "campaign.design=conditioned", "campaign.images_per_trial=20",
             "campaign.rates=[1e-6,0.02]", f"cache_dir={tmp_path}/cache"]
    with pytest.raises(ConfigError, match=r"rate 0.02 is not allowed with the conditioned design: its own fault "
                                          r"count \(Binomial\(\d+, 0.02\), the protection's bounds\) spans \d+ values"):
        preflight(sweep + ["protection=none,fitact"])
    assert not (tmp_path / "cache").exists()
    preflight(sweep + ["protection=none,ranger"])  # one bound per layer: a small own count, allowed
