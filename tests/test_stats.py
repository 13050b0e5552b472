"""minimfm/stats.py against values computed by hand and a textbook example (Student's sleep data)."""
import math

import pytest

from minimfm.stats import format_interval, interval, paired_test, t_quantile, t_two_sided_p


@pytest.mark.parametrize("df, t975", [(1, 12.706204736174707), (2, 4.302652729749464), (4, 2.7764451051977934),
                                      (9, 2.2621571627982053), (29, 2.045229642132703)])
def test_t_quantiles_match_the_table(df, t975):
    assert t_quantile(0.975, df) == pytest.approx(t975, rel=1e-10)
    assert t_two_sided_p(t975, df) == pytest.approx(0.05, abs=1e-10)


def test_t_distribution_closed_forms():
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5, abs=1e-14)  # Cauchy: P(|T| >= 1) = 1/2
    for t in (0.5, 2.0, 7.0):  # df = 2: P(|T| >= t) = 1 - t / sqrt(2 + t^2)
        assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-14)
    assert t_two_sided_p(0.0, 5) == 1.0 and t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        t_quantile(0.3, 2)


def test_interval_by_hand():
    # three seeds 10, 12, 14: mean 12, sd 2, standard error 2/sqrt(3); t_{0.975, 2} = 4.302653
    iv = interval([10, 12, 14])
    assert iv["mean"] == 12 and iv["n"] == 3
    assert iv["half_width"] == pytest.approx(4.302652729749464 * 2 / math.sqrt(3), rel=1e-10)  # 4.968275
    assert iv["half_width"] == pytest.approx(4.968275, abs=1e-6)
    assert (iv["low"], iv["high"]) == pytest.approx((12 - 4.968275, 12 + 4.968275), abs=1e-6)
    # two seeds 1, 3: sd sqrt(2), standard error 1, t_{0.975, 1} = 12.706
    assert interval([1, 3])["half_width"] == pytest.approx(12.706204736174707, rel=1e-10)
    assert format_interval(iv, ".2f") == "12.00 ± 4.97"


def test_one_seed_has_no_interval_and_says_so():
    iv = interval([0.984])
    assert iv["mean"] == 0.984 and iv["half_width"] is None and iv["low"] is None and iv["high"] is None
    assert format_interval(iv) == "0.984 (n=1, no interval)"
    test = paired_test([0.9], [0.8])
    assert test["p"] is None and test["beyond_noise"] is None and test["difference"]["mean"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        interval([])
    with pytest.raises(ValueError):
        interval([1.0, float("nan")])


def test_paired_t_on_students_sleep_data():
    # Cushny & Peebles' extra hours of sleep under two drugs, ten patients (Student 1908; R's `sleep` data set):
    # t.test(extra ~ group, data = sleep, paired = TRUE) gives t = -4.0621, df = 9, p-value = 0.002833,
    # 95 % interval of the mean difference (-2.4598858, -0.7001142)
    drug1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    drug2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    r = paired_test(drug1, drug2)
    assert r["df"] == 9 and r["n"] == 10
    assert r["t"] == pytest.approx(-4.0621, abs=1e-4) and r["p"] == pytest.approx(0.002833, abs=1e-6)
    assert r["difference"]["mean"] == pytest.approx(-1.58)
    assert (r["difference"]["low"], r["difference"]["high"]) == pytest.approx((-2.4598858, -0.7001142), abs=1e-7)
    assert r["beyond_noise"] is True and r["alpha"] == 0.05
    # the test is antisymmetric: swapping a and b flips t, keeps p
    assert paired_test(drug2, drug1)["t"] == pytest.approx(4.0621, abs=1e-4)


def test_three_seeds_agreeing_in_sign_is_not_yet_beyond_noise():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 sqrt(3) = 3.464 on 2 df: p = 1 - t / sqrt(2 + t^2) = 0.0742
    r = paired_test([2, 3, 4], [1, 1, 1])
    assert r["t"] == pytest.approx(2 * math.sqrt(3)) and r["p"] == pytest.approx(0.07417, abs=1e-5)
    assert r["beyond_noise"] is False
    # differences 1.9, 2.0, 2.1: t = 2 / (0.1 / sqrt(3)) = 34.64, p = 0.00083
    r = paired_test([2.9, 3.0, 3.1], [1, 1, 1])
    assert r["p"] == pytest.approx(1 - 34.641016 / math.sqrt(2 + 34.641016 ** 2), abs=1e-6)
    assert r["beyond_noise"] is True
    # identical differences: no spread, t is infinite; all zero: nothing to find
    assert paired_test([2, 2, 2], [1, 1, 1])["p"] == 0.0 and paired_test([1, 1], [1, 1])["p"] == 1.0
    with pytest.raises(ValueError, match="one b per a"):
        paired_test([1, 2], [1])
