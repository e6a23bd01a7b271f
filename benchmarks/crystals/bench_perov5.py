"""perov_5 benchmark: CrysBFN (10 steps) vs the DiffCSP baseline (1000 steps, 2 calls each) on the project's test split,
generation metrics of the CrysBFN gen model, and the time to sample 1,000 crystals. Prints one JSON object.

    .venv/bin/python benchmarks/crystals/bench_perov5.py \
        --bfn-csp runs/perov5-crysbfn-csp/model.pt --diff-csp runs/perov5-diffcsp-csp/model.pt \
        --bfn-gen runs/perov5-crysbfn-gen/model.pt [--limit 200] [--n-cov 300] [--bundle] [--out runs/bench.json]

``--bundle`` copies the CrysBFN checkpoints with their measured metrics to generative/pretrained/perov5-{csp,gen}.pt.
Everything runs on one torch thread unless --threads says otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch


def _train_info(model) -> dict:
    meta = model.metadata
    return {"train": meta.get("train"), "split_sizes": meta.get("split_sizes"), "split_seed": meta.get("split_seed")}


def _over_seeds(runs: list[dict]) -> dict:
    """Match rate and RMS of CSP runs with different sampling seeds: per seed, mean and standard error of the mean."""
    if len(runs) < 2:
        return {}
    rates = [r["match_rate"] for r in runs]
    mean = sum(rates) / len(rates)
    sem = math.sqrt(sum((x - mean) ** 2 for x in rates) / (len(rates) - 1) / len(rates))
    return {"match_rate_by_seed": rates, "match_rate_mean": mean, "match_rate_sem": sem,
            "rms_by_seed": [r["rms"] for r in runs]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bfn-csp")
    ap.add_argument("--diff-csp")
    ap.add_argument("--bfn-gen")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--k", type=int, default=1, help="also report best-of-k for CrysBFN when > 1")
    ap.add_argument("--seeds", type=int, default=1,
                    help="CSP sampling seeds 0..SEEDS-1 for both methods; the comparison uses their mean match rates")
    ap.add_argument("--limit", type=int, default=None, help="first LIMIT test crystals for CSP (same for both methods)")
    ap.add_argument("--diff-limit", type=int, default=None, help="fewer test crystals for the slow diffusion run (default: --limit)")
    ap.add_argument("--n-gen", type=int, default=1000)
    ap.add_argument("--n-cov", type=int, default=None, help="crystals used for coverage (CrystalNN is slow)")
    ap.add_argument("--cov-oracle", action="store_true",
                    help="also score n-gen training crystals as if generated (what a perfect generator gets at this sample size)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bundle", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from generative.checkpoint import PRETRAINED_DIR, load_generator, save_generator
    from generative.evaluate import evaluate_csp, evaluate_gen, model_test_split
    from generative.sample import sample_crystals

    result: dict = {"threads": args.threads}
    if args.bfn_csp:
        bfn = load_generator(args.bfn_csp, task="csp", method="crysbfn")
        refs, info = model_test_split(bfn)
        refs = refs[: args.limit] if args.limit else refs
        bfn_runs = [evaluate_csp(bfn, refs, steps=args.steps, k=1, seed=seed) for seed in range(args.seeds)]
        r_bfn = bfn_runs[0]
        csp = {"data": info, "crysbfn": {**r_bfn, **_train_info(bfn), **_over_seeds(bfn_runs)}}
        if args.k > 1:
            csp["crysbfn_best_of_k"] = evaluate_csp(bfn, refs, steps=args.steps, k=args.k)
        print(json.dumps({"crysbfn_csp": r_bfn}), file=sys.stderr, flush=True)
        if args.diff_csp:
            diff = load_generator(args.diff_csp, task="csp", method="diffcsp")
            dl = args.diff_limit or args.limit
            drefs = refs[:dl] if dl else refs
            diff_runs = [evaluate_csp(diff, drefs, steps=None, k=1, seed=seed) for seed in range(args.seeds)]
            r_diff = diff_runs[0]
            csp["diffcsp"] = {**r_diff, **_train_info(diff), **_over_seeds(diff_runs)}
            same_runs = bfn_runs if len(drefs) == len(refs) else [
                evaluate_csp(bfn, drefs, steps=args.steps, k=1, seed=seed) for seed in range(args.seeds)]
            same = same_runs[0]
            csp["comparison"] = {
                "n_test": len(drefs),
                "network_calls_crysbfn": same["network_calls_per_sample"],
                "network_calls_diffcsp": r_diff["network_calls_per_sample"],
                "network_call_ratio": r_diff["network_calls_per_sample"] / max(same["network_calls_per_sample"], 1),
                "match_rate_crysbfn": same["match_rate"],
                "match_rate_diffcsp": r_diff["match_rate"],
                "match_rate_difference": same["match_rate"] - r_diff["match_rate"],
                "rms_crysbfn": same["rms"],
                "rms_diffcsp": r_diff["rms"],
                "wall_s_crysbfn": same["sampling_wall_s"],
                "wall_s_diffcsp": r_diff["sampling_wall_s"],
            }
            if args.seeds > 1:
                bfn_mean, diff_mean = _over_seeds(same_runs), _over_seeds(diff_runs)
                csp["comparison"].update({
                    "seeds": args.seeds,
                    "match_rate_crysbfn_mean": bfn_mean["match_rate_mean"],
                    "match_rate_diffcsp_mean": diff_mean["match_rate_mean"],
                    "match_rate_difference_mean": bfn_mean["match_rate_mean"] - diff_mean["match_rate_mean"],
                    "match_rate_difference_sem": math.hypot(bfn_mean["match_rate_sem"], diff_mean["match_rate_sem"]),
                })
        result["csp"] = csp
        if args.bundle:
            save_generator(bfn, PRETRAINED_DIR / "perov5-csp.pt", {"metrics": {k: v for k, v in csp.items() if k != "data"}})
    if args.bfn_gen:
        gen = load_generator(args.bfn_gen, task="gen", method="crysbfn")
        refs, info = model_test_split(gen)
        r_gen = evaluate_gen(gen, refs, n=args.n_gen, steps=args.steps, n_cov=args.n_cov)
        result["gen"] = {**r_gen, **_train_info(gen), "data": info}
        if args.cov_oracle:
            from generative.metrics import generation_metrics

            train_refs, _ = model_test_split(gen, split="train")
            oracle = generation_metrics([r.to_structure() for r in train_refs[: args.n_gen]], [r.to_structure() for r in refs],
                                        n_cov=args.n_cov)
            keep = ("n", "struct_validity", "comp_validity", "cov_recall", "cov_precision", "cov_recall_joint", "cov_precision_joint",
                    "amsd_recall", "amcd_recall")
            result["gen"]["oracle_train_crystals"] = {k: oracle[k] for k in keep if k in oracle}
        # time to sample 1,000 crystals (structures built, no metrics)
        t0 = time.perf_counter()
        sample_crystals(gen, n=1000, steps=args.steps, seed=1)
        result["sample_1000_wall_s"] = round(time.perf_counter() - t0, 3)
        if args.bundle:
            extra = {"oracle_train_crystals": result["gen"]["oracle_train_crystals"]} if args.cov_oracle else {}
            save_generator(gen, PRETRAINED_DIR / "perov5-gen.pt",
                           {"metrics": {**r_gen, "sample_1000_wall_s": result["sample_1000_wall_s"], **extra}})
    text = json.dumps(result, indent=2)
    if args.out:
        from mlmd.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
