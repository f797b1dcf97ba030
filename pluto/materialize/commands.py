"""``pluto export``: a trained (float or QAT) model -> ``model.fp32.onnx`` and ``model.int8.onnx``.

A float checkpoint is quantized by PTQ (8 bits, calibrated on ``--calib`` training images) for
the int8 file; a QAT checkpoint (saved from a ``prepare_qat`` model) is exported at the bit-widths
it learned. With ``--verify N`` both files are run in onnxruntime on N test images and the
int8 file is compared with the fake-quant PyTorch model (top-1 agreement, max logit error).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pluto.errors import ConfigError


def _bounded(lo: int, hi: int | None = None):
    """An argparse type: a whole number in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be >= {lo}"
                                             + (f" and <= {hi}" if hi is not None else ""))
        return value
    parse.__name__ = "int"
    return parse


# a compression run's training checkpoints: the model in them is the searched/pruned one, not --model's shape
PHASE_CHECKPOINTS = ("last.pt", "warmup.pt", "search.pt", "finetune.pt")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to fp32 and int8 (QDQ) ONNX files",
                              description=__doc__.splitlines()[0])
    p.add_argument("--model", help="registry name of the architecture, e.g. small_cnn, mobilenet_v2 (not needed for a "
                   "model.pt written by pluto.save, which carries its architecture)")
    p.add_argument("--checkpoint", help="model.pt of a run (float or QAT state dict); omit to export random weights")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data", default="fashion_mnist", help="dataset for calibration/verification: fashion_mnist | synthetic")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the installed package)")
    p.add_argument("--bits", type=int, default=8, choices=(4, 8), help="PTQ bit-width for float checkpoints (default 8)")
    p.add_argument("--calib", type=_bounded(1), default=512, help="training images used to calibrate PTQ (default 512)")
    p.add_argument("--verify", type=_bounded(0), default=1000, help="test images to compare the files on (0: skip)")
    p.add_argument("--opset", type=_bounded(13, 21), default=17, help="ONNX opset, 13..21 (default 17)")
    p.set_defaults(func=run_export)


def _load_model(args: argparse.Namespace, spec) -> tuple[torch.nn.Module, bool]:
    from pluto.decisions.bits import is_qat_state_dict, prepare_from_state_dict
    from pluto.engine.checkpoint import load_checkpoint
    from pluto.models import create_model

    payload = None
    if args.checkpoint:
        if not Path(args.checkpoint).is_file():
            raise ConfigError(f"checkpoint {args.checkpoint} does not exist; pass a run's model.pt "
                              "(outputs/<run>/model.pt)")
        payload = load_checkpoint(args.checkpoint)
        if isinstance(payload, dict) and "architecture" in payload:  # pluto.save: pruned/NAS/QAT as trained
            from pluto.decisions.bits import bit_choices
            from pluto.materialize.saving import load

            restored = load(args.checkpoint)
            return restored, bool(bit_choices(restored))
    if not args.model:
        raise ConfigError("--model is needed for random weights or a plain state dict; pass the registry name "
                          "the checkpoint was trained as")
    model = create_model(args.model, num_classes=spec.num_classes, in_channels=spec.in_channels,
                         input_size=spec.input_size)
    if payload is None:
        return model.eval(), False
    state = payload.get("model", payload)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{args.checkpoint} holds no state dict under 'model'; pass a run's model.pt")
    phase = payload.get("state", {}).get("phase") if isinstance(payload.get("state"), dict) else None
    try:
        if is_qat_state_dict(state):
            return prepare_from_state_dict(model, state).eval(), True
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next((line for line in lines[1:] if "size mismatch" in line or "Missing" in line
                       or "Unexpected" in line), lines[0] if lines else type(exc).__name__)
        hint = "pass the architecture it was trained with"
        if phase in ("warmup", "search", "finetune") or Path(args.checkpoint).name in PHASE_CHECKPOINTS:
            hint = (f"it is a compression run's training checkpoint (phase {phase or '?'}), whose model was searched "
                    "or pruned away from --model's shape; export the run's model.pt, or use the ONNX files the run "
                    "wrote (model_int8.onnx / model_fp32.onnx)")
        raise ConfigError(f"checkpoint {args.checkpoint} does not fit --model {args.model} ({detail[:300]}); "
                          f"{hint}") from exc
    return model.eval(), False


def run_export(args: argparse.Namespace) -> int:
    from pluto.data import build_datasets
    from pluto.decisions.bits import ptq
    from pluto.materialize.export import export_onnx, onnx_session, run_onnx

    out = Path(args.out)  # checked before any work
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; --out names a folder (it receives model.fp32.onnx, model.int8.onnx "
                          "and export.json). Pass a new or existing folder")
    train, test, spec = build_datasets(args.data, root=args.data_root)
    model, is_qat = _load_model(args, spec)
    out.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(spec.input_shape)
    fp32_path = export_onnx(model, example, out / "model.fp32.onnx", int8=False, opset=args.opset)
    if is_qat:
        qmodel = model
    else:
        n = min(args.calib, len(train))
        calib = torch.stack([train[i][0] for i in range(n)])
        qmodel = ptq(model, calib, bits=args.bits, batches=max(1, (n + 127) // 128))
    int8_path = export_onnx(qmodel, example, out / "model.int8.onnx", int8=True, opset=args.opset)
    summary = {"model": args.model, "checkpoint": args.checkpoint, "quantization": "qat" if is_qat else f"ptq{args.bits}",
               "fp32": str(fp32_path), "int8": str(int8_path),
               "layers": json.loads(int8_path.with_suffix(".json").read_text())["layers"]}
    print(f"wrote {fp32_path} and {int8_path} ({summary['quantization']})")
    simulated = [layer["name"] for layer in summary["layers"] if layer["simulated"]]
    if simulated:
        print(f"simulated precision (runs on another kernel, speed not representative): {', '.join(simulated)}")
    if args.verify:
        n = min(args.verify, len(test))
        x = torch.stack([test[i][0] for i in range(n)])
        y = np.array([int(test[i][1]) for i in range(n)])
        with torch.no_grad():
            fake = qmodel.eval()(x).numpy()
        int8 = run_onnx(onnx_session(int8_path), x)
        fp32 = run_onnx(onnx_session(fp32_path), x)
        summary["verify"] = {
            "images": n,
            "int8_vs_fakequant_top1_agreement": float((int8.argmax(1) == fake.argmax(1)).mean()),
            "int8_vs_fakequant_max_abs_logit_error": float(np.abs(int8 - fake).max()),
            "int8_vs_fakequant_mean_abs_logit_error": float(np.abs(int8 - fake).mean()),
            "accuracy_fp32_onnx": float((fp32.argmax(1) == y).mean()),
            "accuracy_int8_onnx": float((int8.argmax(1) == y).mean()),
        }
        for k, v in summary["verify"].items():
            print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    (out / "export.json").write_text(json.dumps(summary, indent=1))
    return 0
