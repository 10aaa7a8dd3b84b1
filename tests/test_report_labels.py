"""Curve labels name what makes two runs of one protection different curves (report/runs.py)."""
from fitact_pipeline.report.runs import variant_of


def test_a_stored_format_other_than_q15_16_is_in_the_label():
    tags = {"protection": "fitact"}
    q15 = {"faults.fmt": "fixed", "faults.word_bits": "32", "faults.frac_bits": "16"}
    assert variant_of(tags, q15) == variant_of(tags, {}) == "fitact"
    assert variant_of(tags, {**q15, "faults.fmt": "fp8_e4m3", "faults.word_bits": "8"}) == "fitact in fp8_e4m3"
    assert variant_of(tags, {**q15, "faults.word_bits": "16", "faults.frac_bits": "8"}) == "fitact in Q7.8"
    nested = {**q15, "faults.fmt": "int4", "campaign.design": "nested", "campaign.images_per_trial": "25"}
    assert variant_of({"protection": "none"}, nested) == "none in int4 (nested, n=25)"
