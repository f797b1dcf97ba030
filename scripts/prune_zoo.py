"""Prune every torchvision classifier at 30% and 70% MACs targets and print params/MACs before and after.

    python scripts/prune_zoo.py                      # all models up to --max-params (default 150 M)
    python scripts/prune_zoo.py --models resnet18 vit_b_16 --targets 0.5
    python scripts/prune_zoo.py --csv zoo.csv        # also write the table

Checks per row: the materialized model's output equals the hard-gated model's (max relative error),
output shape unchanged; MACs counted on the real smaller model with torch.utils.flop_counter.
"""
import argparse
import sys

import pandas as pd
import torch
import torchvision

from pluto.decisions.channels.zoo import ZooResult, check_model, zoo_models


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="default: every torchvision classification model")
    ap.add_argument("--targets", nargs="*", type=float, default=[0.3, 0.7], help="fractions of MACs to remove")
    ap.add_argument("--max-params", type=float, default=150.0, help="skip models above this many M params (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--csv", help="also write the table here")
    ap.add_argument("--onnx", action="store_true", help="also export each pruned model to ONNX and run onnxruntime")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models or zoo_models():
        if args.max_params and name in _BIG:
            n = sum(p.numel() for p in torchvision.models.get_model(name, weights=None).parameters()) / 1e6 \
                if name in _BIG else 0.0
            if n > args.max_params:
                rows += [ZooResult(name, 0, t, n, float("nan"), float("nan"), float("nan"), float("nan"), False, 0.0,
                                   f"skipped: {n:.0f} M params > --max-params") for t in args.targets]
                continue
        try:
            res = check_model(name, tuple(args.targets), onnx=args.onnx)
        except Exception as exc:  # a crash is a finding: report it, keep sweeping
            res = [ZooResult(name, 0, t, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), False,
                             0.0, f"ERROR {type(exc).__name__}: {str(exc)[:100]}") for t in args.targets]
        for r in res:
            print(f"{r.model:22s} t={r.target:.1f} params {r.params_before:8.2f}->{r.params_after:8.2f}M "
                  f"MACs {r.macs_before:9.1f}->{r.macs_after:9.1f}M err {r.max_rel_err:.1e} onnx {r.onnx_err:.1e} {r.status}",
                  flush=True)
        rows += res
        if args.csv:  # written as we go: a long sweep that is cut off still leaves its rows
            pd.DataFrame([r.as_dict() for r in rows]).to_csv(args.csv, index=False)
    df = pd.DataFrame([r.as_dict() for r in rows])
    df["macs_drop"] = 1 - df.macs_after / df.macs_before
    df["params_drop"] = 1 - df.params_after / df.params_before
    ok = df[df.status == "ok"]
    print()
    print(df.to_markdown(index=False, floatfmt=".3g") if _has_tabulate() else df.to_string(index=False))
    print(f"\n{ok.model.nunique()}/{df.model.nunique()} models pruned and verified "
          f"(all max_rel_err < 1e-4: {bool((ok.max_rel_err < 1e-4).all())})")
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0


_BIG = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_x_32gf", "vgg16", "vgg16_bn",
        "vgg19", "vgg19_bn", "vgg13", "vgg13_bn", "vgg11", "vgg11_bn", "regnet_y_16gf", "efficientnet_v2_l", "convnext_large"}


def _has_tabulate() -> bool:
    try:
        import tabulate

        return tabulate is not None
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
