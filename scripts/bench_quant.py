"""PTQ vs QAT accuracy on Fashion-MNIST and measured int8 vs fp32 latency in onnxruntime on this CPU.

For each model: train the float model (cached), quantize it by PTQ (calibrated on ``--calib``
training images) and by QAT (``--qat-epochs`` of LSQ training from the PTQ start, distilled from
the float model), at 8 bits (W8A8) and 4 bits (W4A8), export fp32 and int8 QDQ ONNX files, and
print:

- accuracy on the 10k test images: float (PyTorch), PTQ/QAT fake-quant (PyTorch), int8 ONNX;
- int8 ONNX vs fake-quant parity: top-1 agreement and max |logit error| on the 10k images;
- latency (ms, median of ``--repeats``) of fp32 and int8 ONNX with ``--threads`` intra-op threads,
  batch 1 and batch ``--batch``; 4-bit rows are int8 kernels (simulated 4-bit, not 4-bit speed).

Training is cached in ``--cache`` (state dicts), so a second run (e.g. on another machine, or to
re-measure latency only) skips it. Example::

    python scripts/bench_quant.py --models small_cnn mobilenet_v2 --epochs 4 --qat-epochs 2 --device auto
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pluto.data import load_fashion_mnist  # noqa: E402
from pluto.decisions.bits import harden_bits, prepare_from_state_dict, prepare_qat, ptq  # noqa: E402
from pluto.materialize.export import export_onnx, onnx_session, optimized_op_types, run_onnx  # noqa: E402
from pluto.models import create_model  # noqa: E402
from pluto.optimizer.distillation import DistillationLoss  # noqa: E402


def batches(x, y, batch_size, generator):
    order = torch.randperm(len(x), generator=generator, device="cpu")
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def logits_of(model, x, device, batch_size=1000):
    model.eval()
    return torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def train(model, x, y, device, epochs, lr, teacher=None, batch_size=128, seed=0, log=""):
    """AdamW + cosine schedule; with a teacher, the loss is logit KD (T=4, alpha=0.7)."""
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4 if teacher is None else 0.0)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15 if teacher is None else 0.05)
    kd = DistillationLoss(temperature=4.0, alpha=0.7) if teacher is not None else None
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        t0, total = time.time(), 0.0
        for xb, yb in batches(x, y, batch_size, g):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            out = model(xb)
            if kd is None:
                loss = F.cross_entropy(out, yb, label_smoothing=0.05)
            else:
                with torch.no_grad():
                    t_out = teacher(xb)
                loss = kd(out, t_out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        print(f"  {log} epoch {epoch + 1}/{epochs}: loss {total / (len(x) / batch_size):.4f} ({time.time() - t0:.0f}s)",
              flush=True)
    return model.eval()


def accuracy(logits, y):
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def latency_ms(path, x, threads, repeats, warmup=10):
    session = onnx_session(path, threads=threads)
    name = session.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(x.numpy(), dtype=np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["small_cnn", "mobilenet_v2"])
    ap.add_argument("--epochs", type=int, default=4, help="float training epochs")
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--bits", nargs="+", type=int, default=[8, 4])
    ap.add_argument("--calib", type=int, default=512, help="PTQ calibration images (from the training set)")
    ap.add_argument("--train-limit", type=int, default=None, help="use only this many training images")
    ap.add_argument("--qat-limit", type=int, default=None, help="QAT on only the first N training images (CPU runs)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache", default="outputs/bench_quant", help="folder for trained state dicts and ONNX files")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=32, help="second latency batch size (the first is 1)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--latency-only", action="store_true",
                    help="skip training/accuracy: time fp32 vs PTQ int8 files of random-weight models (latency does not "
                         "depend on weight values)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    train_set, test_set = load_fashion_mnist(True, limit=args.train_limit), load_fashion_mnist(False)
    xtr, ytr = train_set.tensors
    xte, yte = test_set.tensors
    calib = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1))[: args.calib]]
    acc_rows, lat_rows = [], []
    if args.latency_only:
        for name in args.models:
            model = create_model(name).eval()
            files = {"fp32": export_onnx(model, xte[:1], cache / f"{name}.rand.fp32.onnx", int8=False)}
            for bits in args.bits:
                files[f"int{bits}"] = export_onnx(ptq(model, calib, bits=bits, batches=2), xte[:1],
                                                  cache / f"{name}.rand.int{bits}.onnx")
            for threads in args.threads:
                for batch in (1, args.batch):
                    t = {k: latency_ms(p, xte[:batch], threads, args.repeats) for k, p in files.items()}
                    lat_rows.append({"model": name, "threads": threads, "batch": batch, **t})
        args.models = []
    for name in args.models:
        print(f"== {name} (device {device}, {torch.get_num_threads()} torch threads)", flush=True)
        float_path = cache / f"{name}.float.pt"
        model = create_model(name)
        if float_path.is_file():
            model.load_state_dict(torch.load(float_path, weights_only=True, map_location="cpu"))
        else:
            train(model, xtr, ytr, device, args.epochs, lr=3e-3, log=f"{name} float")
            torch.save(model.state_dict(), float_path)
        model.to(device).eval()
        float_logits = logits_of(model, xte, device)
        row = {"model": name, "float": accuracy(float_logits, yte)}
        files = {"fp32": export_onnx(model.cpu(), xte[:1], cache / f"{name}.fp32.onnx", int8=False)}
        model.to(device)
        fp32_onnx = run_onnx(onnx_session(files["fp32"], threads=2), xte)
        row["fp32 onnx"] = accuracy(torch.from_numpy(fp32_onnx), yte)
        for bits in args.bits:
            ptq_model = ptq(model, calib.to(device), bits=bits, batches=max(1, args.calib // 128))
            row[f"ptq{bits}"] = accuracy(logits_of(ptq_model, xte, device), yte)
            qat_path = cache / f"{name}.qat{bits}.pt"
            if qat_path.is_file():
                qat_model = prepare_from_state_dict(create_model(name).to(device),
                                                    torch.load(qat_path, weights_only=True, map_location=device))
            else:
                qat_model = prepare_qat(copy.deepcopy(model), bits=bits, calibrate=calib.to(device),
                                        calibrate_batches=max(1, args.calib // 128), mode="hard")
                harden_bits(qat_model)
                n = args.qat_limit or len(xtr)
                train(qat_model, xtr[:n], ytr[:n], device, args.qat_epochs, lr=2e-4, teacher=model,
                      log=f"{name} qat{bits} on {n} images")
                torch.save(qat_model.state_dict(), qat_path)
            fq_logits = logits_of(qat_model, xte, device)
            row[f"qat{bits}"] = accuracy(fq_logits, yte)
            files[f"int{bits}"] = export_onnx(qat_model.cpu(), xte[:1], cache / f"{name}.qat{bits}.onnx")
            onnx_logits = torch.from_numpy(run_onnx(onnx_session(files[f"int{bits}"], threads=2), xte))
            row[f"qat{bits} onnx"] = accuracy(onnx_logits, yte)
            row[f"agree{bits}"] = 100.0 * float((onnx_logits.argmax(1) == fq_logits.argmax(1)).float().mean())
            row[f"maxerr{bits}"] = float((onnx_logits - fq_logits).abs().max())
            row[f"logit_range{bits}"] = float(fq_logits.abs().max())
            ops = optimized_op_types(files[f"int{bits}"])
            row[f"qlinear{bits}"] = f"{ops.get('QLinearConv', 0)}/{ops.get('QLinearConv', 0) + ops.get('Conv', 0) + ops.get('FusedConv', 0)}"
        acc_rows.append(row)
        if not args.no_latency:
            for threads in args.threads:
                for batch in (1, args.batch):
                    x = xte[:batch]
                    t = {k: latency_ms(p, x, threads, args.repeats) for k, p in files.items()}
                    lat_rows.append({"model": name, "threads": threads, "batch": batch, **t})
    if acc_rows:
        print_accuracy(acc_rows, args)
    print_latency(lat_rows, args)
    return 0


def print_accuracy(acc_rows, args):
    print("\n## Accuracy on the Fashion-MNIST test set (10k images), %")
    cols = ["float", "fp32 onnx"] + [c for b in args.bits for c in (f"ptq{b}", f"qat{b}", f"qat{b} onnx")]
    print("| model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in acc_rows:
        print(f"| {r['model']} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
    print("\n## int8 ONNX (onnxruntime) vs fake-quant PyTorch, 10k test images")
    print("| model | bits | top-1 agreement % | max abs logit error | max abs logit | QLinearConv / convs |")
    print("|---|---|---|---|---|---|")
    for r in acc_rows:
        for b in args.bits:
            sim = " (W4A8, simulated 4-bit)" if b < 8 else ""
            print(f"| {r['model']} | {b}{sim} | {r[f'agree{b}']:.2f} | {r[f'maxerr{b}']:.2e} | "
                  f"{r[f'logit_range{b}']:.2f} | {r[f'qlinear{b}']} |")


def print_latency(lat_rows, args):
    if lat_rows:
        print(f"\n## onnxruntime CPU latency, ms (median of {args.repeats}); int4 = int8 kernels, simulated")
        keys = ["fp32"] + [f"int{b}" for b in args.bits]
        print("| model | threads | batch | " + " | ".join(keys) + " | fp32/int8 |")
        print("|---" * (len(keys) + 4) + "|")
        for r in lat_rows:
            ratio = r["fp32"] / r["int8"] if "int8" in r else float("nan")
            print(f"| {r['model']} | {r['threads']} | {r['batch']} | " + " | ".join(f"{r[k]:.3f}" for k in keys)
                  + f" | {ratio:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
