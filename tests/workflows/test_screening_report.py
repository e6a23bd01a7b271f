"""Report table logic on hand-made rows: MSD-based numbers of non-diffusive runs are marked and do not rank."""

from workflows.screening.report import NOT_DIFFUSIVE_MARK, _cell, ranked


def row(name, sigma, diffusive, status="done"):
    return {"formulation": name, "status": status, "sigma_Einstein_mS_cm": sigma, "sigma_Einstein_mS_cm_sem": 0.5,
            "density_g_cm3": 1.2, "density_g_cm3_sem": 0.01, "transport_diffusive": diffusive}


def test_non_diffusive_transport_is_marked_and_ranks_after_diffusive_rows():
    fast_but_ballistic = row("ballistic", 9.0, 0.0)
    slow_diffusive = row("diffusive", 3.0, 1.0)
    unknown = row("no-transport", None, None)
    failed = row("failed", None, None, status="failed")
    order = [r["formulation"] for r in ranked([failed, fast_but_ballistic, unknown, slow_diffusive])]
    assert order == ["diffusive", "ballistic", "no-transport", "failed"]
    assert _cell(fast_but_ballistic, "sigma_Einstein_mS_cm", "sigma_Einstein_mS_cm_sem") == "9.00 ± 0.50" + NOT_DIFFUSIVE_MARK
    assert _cell(slow_diffusive, "sigma_Einstein_mS_cm", "sigma_Einstein_mS_cm_sem") == "3.00 ± 0.50"
    # Density does not depend on the MSD, so it is never marked; ranking by it ignores the regime.
    assert _cell(fast_but_ballistic, "density_g_cm3", "density_g_cm3_sem") == "1.200 ± 0.010"
    assert [r["formulation"] for r in ranked([slow_diffusive, fast_but_ballistic], "density_g_cm3")][0] == "diffusive"
