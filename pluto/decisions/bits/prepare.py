"""Model-level QAT transforms: ``prepare_qat -> train -> harden_bits -> strip_quantization / export``.

:func:`prepare_qat` puts a :class:`BitWidthChoice` on every chosen conv/linear layer: as the
parametrization of its ``weight`` (``torch.nn.utils.parametrize``) and as a forward pre-hook
that quantizes its input. Module names, classes and the model's structure stay as they were, so
channel gates (forward hooks) and the pruning materializer (slicing by module name) work on the
quantized model; only the weight's state-dict key becomes ``<layer>.parametrizations.weight.original``.

:func:`ptq` is post-training quantization: prepare at a fixed bit-width, calibrate the steps from
a few hundred images, no training. It is the baseline QAT has to beat.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from pluto.decisions.bits.choice import BitWidthChoice
from pluto.decisions.bits.folding import conv_bn_pairs
from pluto.errors import ConfigError, UnsupportedModelError

QUANTIZABLE = (nn.Conv2d, nn.Linear)
BitsSpec = int | Iterable[int] | Mapping[str, int | Iterable[int]]
_SAMPLES_PER_BATCH = 1 << 16


def quantizable_layers(model: nn.Module) -> list[str]:
    """Qualified names of the layers a bit-width can be chosen for (``nn.Conv2d``, ``nn.Linear``)."""
    return [name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]


def bit_choices(model: nn.Module) -> dict[str, BitWidthChoice]:
    """Layer qualified name -> its :class:`BitWidthChoice`, for every quantized layer of ``model``."""
    out = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, BitWidthChoice):
                    out[name] = p
    return out


def _candidates(bits: int | Iterable[int]) -> tuple[int, ...]:
    return (int(bits),) if isinstance(bits, int) else tuple(int(b) for b in bits)


def _resolve_bits(model: nn.Module, bits: BitsSpec, skip: Iterable[str]) -> dict[str, tuple[int, ...]]:
    layers = quantizable_layers(model)
    if not isinstance(bits, Mapping):
        skipped = set(skip)
        return {name: _candidates(bits) for name in layers if name not in skipped}
    modules = dict(model.named_modules())
    out = {}
    for name, spec in bits.items():
        if name not in modules:
            raise ConfigError(f"bits names layer {name!r}, which the model does not have; "
                              f"quantizable layers are e.g. {', '.join(layers[:5])}")
        if not isinstance(modules[name], QUANTIZABLE):
            raise UnsupportedModelError(
                f"layer {name!r} is a {type(modules[name]).__name__}; bit-widths can be chosen only for "
                f"{', '.join(t.__name__ for t in QUANTIZABLE)} layers. Remove it from bits (its neighbours' "
                "quantizers already cover its input/output).")
        out[name] = _candidates(spec)
    return out


def _quantize_input_hook(module: nn.Module, args: tuple) -> tuple:
    choice = _choice_of(module)
    choice.begin_call()
    return (choice.quantize_input(args[0]), *args[1:])


def _end_call_hook(module: nn.Module, args: tuple, output: Tensor) -> None:
    _choice_of(module).end_call()


class _OutputQuantizeHook:
    """Forward hook quantizing the output of a layer (or of its BN). An object, not a closure, so that
    ``copy.deepcopy`` of the model remaps ``choice`` to the copy's own choice."""

    def __init__(self, choice: BitWidthChoice):
        self.choice = choice

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return self.choice.quantize_output(output)


_TRANSPARENT = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool2d, nn.Identity, nn.Dropout)


def _output_sites(model: nn.Module, layers: Mapping[str, tuple[int, ...]], pairs: Mapping[str, str]) -> dict[str, str]:
    """Quantized layer -> module whose output to quantize, for layers whose output reaches no quantized layer.

    Follows the (BN-folded) output through ReLU / max-pool / identity-like ops. A layer whose every
    path reaches a layer that always quantizes its input (integer candidates only) needs no output quantizer
    (that layer's input Q does the job); one whose output reaches a layer that may run in float (an fp32 / fp16
    candidate) gets one, applied while the layer itself runs an integer candidate: without it the exported
    int8 layer has no Quantize after it and onnxruntime runs it as an fp32 Conv between Q/DQ (MobileNetV2 with
    int8 / fp32 alternating: 18 of 27 int8 layers unfused, 4.1x the all-int8 latency in
    ``scripts/precision_boundaries.py``, 2026-12-07); one whose output is the model's output (logits) stays float.
    Untraceable models get none.
    """
    import torch.fx as fx
    import torch.nn.functional as F

    always_quantized = {name for name, candidates in layers.items() if max(candidates) <= 8}
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # untraceable: no output quantization
        return {}
    modules = dict(model.named_modules())

    def transparent(node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(modules.get(node.target), _TRANSPARENT)
        if node.op == "call_function":
            return node.target in (F.relu, torch.relu, F.relu6, F.max_pool2d, F.dropout)
        return node.op == "call_method" and node.target in ("relu", "relu_")

    def consumers_quantized(node: fx.Node) -> bool | None:
        """True: all paths reach quantized layers; False: some path reaches another op; None: reaches output."""
        result = True
        for user in node.users:
            if user.op == "output":
                return None
            if user.op == "call_module" and user.target in always_quantized:
                continue
            if transparent(user):
                sub = consumers_quantized(user)
                if sub is None:
                    return None
                result = result and sub
            else:
                result = False
        return result

    sites = {}
    nodes = {n.target: n for n in graph.nodes if n.op == "call_module"}
    for name, candidates in layers.items():
        if name not in nodes or min(candidates) > 8:  # a float-only layer has no integer output to quantize
            continue
        site = pairs.get(name, name)
        node = nodes.get(site, nodes[name])
        if consumers_quantized(node) is False:
            sites[name] = site if site in nodes else name
    return sites


def _choice_of(module: nn.Module) -> BitWidthChoice:
    # looked up from the module (not captured in a closure) so deep copies hook their own choice
    return next(p for p in module.parametrizations.weight if isinstance(p, BitWidthChoice))


def prepare_qat(model: nn.Module, bits: BitsSpec = (4, 8), example_input: Tensor | None = None,
                fold_bn: bool = True, calibrate: Tensor | Iterable | None = None, mode: str = "soft",
                temperature: float = 1.0, skip: Iterable[str] = (), calibrate_batches: int = 8,
                min_activation_bits: int = 8, quantize_outputs: bool | Iterable[str] = True) -> nn.Module:
    """Make ``model`` quantization-aware, in place, and return it.

    Args:
        bits: one bit-width for every conv/linear layer (``8``), candidate bit-widths for every
            layer (``(4, 8)``, ``(4, 8, 32)``), or ``{layer_name: bits or candidates}`` for exactly
            those layers (e.g. the dict :func:`strip_quantization` returned).
        example_input: an input batch; used to initialize the quantizers when ``calibrate`` is None.
        fold_bn: quantize conv weights with their following BatchNorm folded in (what the int8
            runtime executes); the BN modules stay in the model.
        calibrate: a tensor of inputs, or an iterable of batches (``x`` or ``(x, y, ...)``, e.g. a
            DataLoader), used to initialize steps from statistics (:func:`calibrate`). Without it
            (and without ``example_input``) each quantizer initializes from its first training batch.
        mode, temperature: how layers mix their candidates (see :class:`BitWidthChoice`).
        skip: layer names left in float when ``bits`` is not a dict (e.g. the first conv).
        min_activation_bits: input activations of integer layers get at least this many bits
            (8: 4-bit layers are W4A8 and run on int8 kernels; 4: W4A4, simulated only).
        quantize_outputs: 8-bit-quantize the (BN-folded) output of layers whose output feeds no
            quantized layer (e.g. MobileNetV2's projection convs before the residual add), so the
            runtime runs them in int8 kernels too; the logits layer stays float. A collection of layer names:
            exactly those of them that need one (a checkpoint's own, see :func:`prepare_from_state_dict`).
    """
    if bit_choices(model):
        raise ConfigError("model is already prepared for QAT; call strip_quantization(model) first to re-prepare it")
    per_layer = _resolve_bits(model, bits, skip)
    pairs = conv_bn_pairs(model) if fold_bn else {}
    if isinstance(quantize_outputs, bool):
        sites = _output_sites(model, per_layer, pairs) if quantize_outputs else {}
    else:  # exactly these layers (a checkpoint's), whatever the rule that placed them then
        sites = {name: pairs.get(name, name) for name in quantize_outputs if name in per_layer}
    for name, candidates in per_layer.items():
        layer = model.get_submodule(name)
        bn = model.get_submodule(pairs[name]) if name in pairs else None
        out_channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        choice = BitWidthChoice(out_channels, candidates, mode=mode, temperature=temperature, bn=bn,
                                min_activation_bits=min_activation_bits, quantize_output=name in sites)
        choice.to(layer.weight.device)
        choice.init_weight_steps(layer.weight)
        parametrize.register_parametrization(layer, "weight", choice)
        layer.register_forward_pre_hook(_quantize_input_hook)
        layer.register_forward_hook(_end_call_hook)
        if name in sites:
            model.get_submodule(sites[name]).register_forward_hook(_OutputQuantizeHook(choice))
    if calibrate is not None:
        _calibrate(model, calibrate, batches=calibrate_batches)
    elif example_input is not None:
        _calibrate(model, example_input, batches=1)
    return model


def _batches(data: Tensor | Iterable, batches: int, batch_size: int = 128) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        data = data.split(batch_size)
    for i, batch in enumerate(data):
        if i >= batches:
            break
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


class _Recorder:
    """Collects a random sample of a layer's float inputs (plus their extremes) during calibration."""

    def __init__(self) -> None:
        self.samples: list[Tensor] = []

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().flatten().float()
        if x.numel() > _SAMPLES_PER_BATCH:
            idx = torch.randint(0, x.numel(), (_SAMPLES_PER_BATCH,), device=x.device)
            x = torch.cat([x[idx], x.min().reshape(1), x.max().reshape(1)])
        self.samples.append(x.cpu())


@torch.no_grad()
def calibrate(model: nn.Module, data: Tensor | Iterable, batches: int = 8, method: str = "mse") -> nn.Module:
    """Initialize every quantizer's step (and zero point) from statistics; returns ``model``.

    Weights: from the (BN-folded) float weights, per output channel. Activations: from the float
    model's layer inputs over ``batches`` batches of ``data`` (run in eval mode, quantization
    bypassed, so calibration sees the statistics the float model produces and BN stats are kept).
    ``method``: ``"mse"`` | ``"minmax"`` | ``"lsq"`` (see :class:`LsqQuantizer`).
    """
    choices = bit_choices(model)
    if not choices:
        raise ConfigError("calibrate() needs a model prepared with prepare_qat() or ptq()")
    was_training = model.training
    recorders, handles, saved_modes = {}, [], {}
    output_sites = {id(hook.choice): module for module, hook in _output_hooks(model)}
    for name, choice in choices.items():
        layer = model.get_submodule(name)
        choice.init_weight_steps(layer.parametrizations.weight.original, method)
        if choice.input_quantizers:
            recorders[name] = _Recorder()
            handles.append(layer.register_forward_pre_hook(recorders[name], prepend=True))
        if choice.output_quantizer is not None and id(choice) in output_sites:
            recorders[f"{name}:output"] = _Recorder()
            handles.append(output_sites[id(choice)].register_forward_hook(
                _as_forward_hook(recorders[f"{name}:output"]), prepend=True))
        saved_modes[name] = (choice.mode, int(choice.chosen))
    model.eval()
    try:
        for batch in _batches(data, batches):
            device = next(model.parameters()).device
            with parametrize.cached():
                _float_forward(model, choices, batch.to(device))
    finally:
        for h in handles:
            h.remove()
        for name, choice in choices.items():
            mode, chosen = saved_modes[name]
            choice.chosen.fill_(chosen)
            choice.mode = mode
        model.train(was_training)
    for name, recorder in recorders.items():
        if not recorder.samples:
            raise ConfigError(f"calibration data never reached layer {name!r}; pass inputs the model accepts")
        sample = torch.cat(recorder.samples)
        if name.endswith(":output"):
            choices[name[: -len(":output")]].output_quantizer.init_from(sample, method)
            continue
        for q in choices[name].input_quantizers.values():
            q.init_from(sample, method)
    return model


def _as_forward_hook(recorder: "_Recorder"):
    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        recorder(module, (output,))
    return hook


def _output_hooks(model: nn.Module) -> list[tuple[nn.Module, _OutputQuantizeHook]]:
    return [(m, h) for m in model.modules() for h in m._forward_hooks.values() if isinstance(h, _OutputQuantizeHook)]


_calibrate = calibrate  # prepare_qat's argument named `calibrate` shadows the function


def _float_forward(model: nn.Module, choices: dict[str, BitWidthChoice], x: Tensor) -> None:
    """One forward pass with every quantizer bypassed (each layer computes in float)."""
    saved = {name: c.candidates for name, c in choices.items()}
    try:
        for c in choices.values():
            c.candidates = (32,)
            c.chosen.fill_(0)
        model(x)
    finally:
        for name, c in choices.items():
            c.candidates = saved[name]


def bit_logits(model: nn.Module) -> list[nn.Parameter]:
    """The architecture parameters of the bit decisions (one ``alpha`` per layer), for their own optimizer."""
    return [c.alpha for c in bit_choices(model).values()]


def bit_probabilities(model: nn.Module) -> dict[str, dict[str, Tensor]]:
    """Layer name -> {precision: probability} with the cost tables' keys ('int4', 'int8', 'fp16', 'fp32').

    4-bit layers are keyed 'int4': the cost model times them as int8 kernels (no int4 kernels on
    these runtimes) and sizes them at 4 bits per weight. Differentiable w.r.t. the bit logits.
    """
    return {name: c.precision_probabilities() for name, c in bit_choices(model).items()}


def expected_bits(model: nn.Module) -> dict[str, Tensor]:
    """Layer name -> expected bits per weight (``sum_b p_b * b``), differentiable, for model-size costs."""
    return {name: c.expected_bits() for name, c in bit_choices(model).items()}


def set_bit_mode(model: nn.Module, mode: str | None = None, temperature: float | None = None) -> None:
    """Set every layer's mixing mode ('soft' | 'gumbel' | 'hard') and/or softmax temperature."""
    for c in bit_choices(model).values():
        if mode is not None:
            c.mode = mode
        if temperature is not None:
            c.temperature = temperature


def harden_bits(model: nn.Module, bits: Mapping[str, int] | None = None) -> dict[str, int]:
    """Fix each layer to its most probable bit-width (or to ``bits[name]``); returns name -> bits."""
    choices = bit_choices(model)
    if bits is not None:
        unknown = sorted(set(bits) - set(choices))
        if unknown:
            raise ConfigError(f"harden_bits got layers that are not quantized: {unknown}")
    return {name: c.harden(None if bits is None else bits.get(name)) for name, c in choices.items()}


def chosen_bits(model: nn.Module) -> dict[str, int]:
    """Layer name -> the bit-width it currently runs at (hardened, else the most probable)."""
    return {name: c.chosen_bits for name, c in bit_choices(model).items()}


def strip_quantization(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """Remove quantizers and hooks in place, restoring float weights; returns ``(model, {layer: bits})``.

    The bits are each layer's chosen (or most probable) bit-width; pass them back to
    :func:`prepare_qat` after materializing a pruned model to quantize it the same way.
    """
    choices = bit_choices(model)
    bits = {name: c.chosen_bits for name, c in choices.items()}
    for name in choices:
        layer = model.get_submodule(name)
        _remove_weight_parametrization(layer)
        for hooks, fn in ((layer._forward_pre_hooks, _quantize_input_hook), (layer._forward_hooks, _end_call_hook)):
            for key in [k for k, h in hooks.items() if h is fn]:
                del hooks[key]
    for module in model.modules():
        for key in [k for k, h in module._forward_hooks.items() if isinstance(h, _OutputQuantizeHook)]:
            del module._forward_hooks[key]
    return model, bits


def is_qat_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether ``state_dict`` was saved from a model prepared with :func:`prepare_qat`."""
    return any(k.endswith("parametrizations.weight.0.candidate_bits") for k in state_dict)


def prepare_from_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Prepare a float ``model`` the way the QAT model that saved ``state_dict`` was, then load it (in place).

    Reads each layer's candidate bits, activation floor and BN folding from the buffers
    :class:`BitWidthChoice` stores, so a QAT checkpoint loads without knowing its configuration.
    """
    suffix = ".parametrizations.weight.0.candidate_bits"
    layers = {k[: -len(suffix)]: [int(b) for b in v.tolist()] for k, v in state_dict.items() if k.endswith(suffix)}
    if not layers:
        raise ConfigError("this state dict holds no quantized layers; load it into the float model directly")
    floors = {int(state_dict[f"{n}.parametrizations.weight.0.min_activation_bits"]) for n in layers}
    folds = {bool(state_dict[f"{n}.parametrizations.weight.0.folds_bn"]) for n in layers}
    # the layers that saved an output quantizer get one (the rule that places them may have changed since)
    marker = ".parametrizations.weight.0.output_quantizer."
    outputs = {k.split(marker)[0] for k in state_dict if marker in k}
    prepare_qat(model, bits=layers, fold_bn=any(folds), min_activation_bits=min(floors), quantize_outputs=outputs)
    for name, choice in bit_choices(model).items():
        saved = bool(state_dict[f"{name}.parametrizations.weight.0.folds_bn"])
        if saved != (choice.bn is not None):
            raise ConfigError(f"layer {name!r}: the checkpoint was {'with' if saved else 'without'} BN folding but "
                              "this model's structure differs; build the same architecture as the checkpoint")
        extra = [choice.output_quantizer] if choice.output_quantizer is not None else []
        for q in [*choice.weight_quantizers.values(), *choice.input_quantizers.values(), *extra]:
            q.initialized.fill_(True)  # the loaded state sets the real flag
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ConfigError(f"QAT checkpoint does not fit this model ({str(exc).splitlines()[0]}); "
                          "build the same architecture (and num_classes/in_channels) it was saved from") from exc
    for name, choice in bit_choices(model).items():
        if choice.is_hard:
            choice.mode = "hard"
    return model


def _remove_weight_parametrization(layer: nn.Module) -> None:
    """Restore the float ``weight`` of ``layer``.

    ``torch.nn.utils.parametrize.remove_parametrizations`` deletes the property from the module's
    injected class, which deep copies of the model share, so it would break every copy. When the
    weight is the only parametrized tensor we restore the original class and parameter directly.
    """
    parametrizations = layer.parametrizations
    if list(parametrizations.keys()) != ["weight"] or len(parametrizations.weight) != 1:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        return
    original = parametrizations.weight.original
    del layer._modules["parametrizations"]
    layer.__class__ = layer.__class__.__bases__[0]
    others = {k: v for k, v in layer._parameters.items() if k != "weight"}
    layer._parameters.clear()  # keep the float layer's parameter order (weight first) in its state dict
    layer._parameters.update({"weight": original, **others})


def ptq(model: nn.Module, calib_data: Tensor | Iterable, bits: int | Mapping[str, int] = 8, fold_bn: bool = True,
        batches: int = 8, method: str = "mse", min_activation_bits: int = 8) -> nn.Module:
    """Post-training quantization: a quantized copy of ``model`` with steps calibrated on ``calib_data``.

    ``model`` is left untouched; the copy is hardened (every layer fixed at its bit-width) and in
    eval mode, ready to evaluate or export.
    """
    qmodel = prepare_qat(copy.deepcopy(model), bits=bits, fold_bn=fold_bn, mode="hard",
                         min_activation_bits=min_activation_bits)
    calibrate(qmodel, calib_data, batches=batches, method=method)
    harden_bits(qmodel)
    return qmodel.eval()
