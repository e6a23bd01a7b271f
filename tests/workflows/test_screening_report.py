"""Report table logic on hand-made rows: MSD-based numbers of non-diffusive runs are marked and do not rank."""

import shutil
import subprocess

import pytest

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


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless chromium")
def test_report_renders_in_a_headless_browser(tmp_path):
    import ase.db
    from ase import Atoms

    from workflows.screening.report import write_report

    db = ase.db.connect(str(tmp_path / "screen.db"))
    db.write(Atoms("Li", cell=[10, 10, 10], pbc=True), data={"notes": ["transport: not diffusive"]},
             **{k: v for k, v in row("LiPF6-EC", 9.0, 0.0).items() if v is not None})
    db.write(Atoms("Li", cell=[10, 10, 10], pbc=True), formulation="broken", status="failed", stage="prepare",
             error="synthetic failure")
    page = write_report(str(tmp_path / "screen.db"), tmp_path / "report")["html"]
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(browser + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<table>" in dom.stdout
    assert "LiPF6-EC" in dom.stdout and "failed at prepare" in dom.stdout and NOT_DIFFUSIVE_MARK.strip() in dom.stdout
    shot = tmp_path / "page.png"
    subprocess.run(browser + ["--window-size=1280,900", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    assert pixels.size == (1280, 900) and pixels.getextrema()[0] < 100  # dark text drawn on the white page
