"""stage_profile's ``--sites`` attribution: every aten op run under ``SiteClock`` is counted once, at
the myfla source line that called it (ops called from elsewhere at ``?``), and the summary's totals are
the sums of its entries."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import stage_profile  # noqa: E402


def test_ops_are_attributed_to_myfla_call_sites():
    xs, call = stage_profile.make_call("kda", 1, 70, 2, 16, 8)        # padded last chunk: conversions copy
    with stage_profile.SiteClock() as clock:
        o, ht = call()
        torch.autograd.backward((o, ht), (torch.ones_like(o), torch.ones_like(ht)))
        outside = torch.mm(torch.ones(3, 3), torch.ones(3, 3))       # not called from myfla
    assert torch.isfinite(o).all() and outside.sum() == 27
    sites = clock.sites
    assert sites[("mm", "?")][0] == 1
    mine = {site for (_, site) in sites if site != "?"}
    assert mine and all(site.startswith("myfla/") and ".py:" in site for site in mine)
    # helper frames show their caller: a chunk op's products are reached through myfla's dot helpers
    assert any(" <- myfla/ops/" in site for site in mine)
    assert any(op in stage_profile.COPY_OPS for (op, _) in sites)


def test_summary_totals_are_the_sums_of_the_entries():
    xs, call = stage_profile.make_call("gdn", 1, 64, 1, 16, 16)
    with stage_profile.SiteClock() as clock:
        call()
    summary = clock.summary(top=5)
    all_ms = 1e3 * sum(seconds for _, seconds in clock.sites.values())
    assert abs(summary["ops_ms"] + summary["meta_ms"] - all_ms) < 1e-6 * max(1.0, all_ms)
    copies = 1e3 * sum(s for (op, _), (_, s) in clock.sites.items() if op in stage_profile.COPY_OPS)
    assert abs(summary["copies_ms"] - copies) < 1e-9 + 1e-9 * copies
    assert 0 < len(summary["top"]) <= 5
    ranked = [row["ms"] for row in summary["top"]]
    assert ranked == sorted(ranked, reverse=True)
    assert all(row["op"] not in stage_profile.META_OPS and row["calls"] >= 1 for row in summary["top"])
