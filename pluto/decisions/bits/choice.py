"""A per-layer bit-width decision (``BitWidthChoice``): which precision a conv/linear layer runs at.

One ``BitWidthChoice`` sits on one conv/linear layer as the parametrization of its ``weight``
(``torch.nn.utils.parametrize``), so the layer keeps its qualified name and class and other
decisions (channel gates, pruning) still find it. The same bit-width applies to the layer's
weights and, floored at ``min_activation_bits`` (default 8), to its input activation: the
candidates are bit counts from :data:`SUPPORTED_BITS`: 4 and 8 are integer quantization
(:class:`LsqQuantizer`), i.e. "W8A8" and "W4A8" by default (4-bit weights on int8 kernels, as
int8 runtimes execute them; pass ``min_activation_bits=4`` for W4A4, which no runtime here runs
in integer kernels), 16 is fp16 (values rounded to fp16) and 32 is the float layer unchanged.

Logits ``alpha`` (one per candidate, zero = uniform) give the probabilities the cost model reads
(:meth:`BitWidthChoice.precision_probabilities`, keyed by the precision strings of the cost
tables: 'int4', 'int8', 'fp16', 'fp32'). How the layer mixes its candidates is its ``mode``:

- ``"soft"``: the layer sees the probability mixture of the quantized candidates,
  ``w_hat = sum_b p_b Q_b(w)`` and ``x_hat = sum_b p_b Q_b(x)``; one conv runs on the mixed
  weight and input (EdMIPS-style: the mixture of the inputs and of the weights, not of the
  |B|^2 output pairs, which costs one conv instead of |B|).
- ``"gumbel"``: straight-through Gumbel-softmax (training only): one candidate ``k`` is sampled per
  layer call (shared by weight and input); the forward value is exactly ``Q_k`` (weight 1, the
  others 0) and the gradient is that of the soft sample, so ``alpha`` learns from the candidates
  it did not pick (all candidates are computed for that gradient). In eval mode: the argmax.
- ``"hard"``: only the chosen candidate (``harden()``, the argmax) runs; no gradient to ``alpha``.

With a conv followed by BatchNorm, the choice quantizes the **folded** weight
``w * gamma / sqrt(var + eps)`` and divides the factor back out (simulated BN folding, as in
torch.ao's ConvBn QAT): the BN stays in the model, and folding it for export gives exactly the
integer weights that were trained.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pluto.decisions.bits.quantizer import (_EPS, LsqQuantizer, fp16_mixture, fp16_ste, host_attr,
                                            integer_range, step_gradient_sign)
from pluto.errors import ConfigError

SUPPORTED_BITS = (4, 8, 16, 32)
MODES = ("soft", "gumbel", "hard")
PRECISION_OF_BITS = {4: "int4", 8: "int8", 16: "fp16", 32: "fp32"}


def bn_fold_factor(bn: nn.Module) -> Tensor:
    """``gamma / sqrt(running_var + eps)`` per output channel: what BN multiplies the conv output by at inference."""
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    return gamma / torch.sqrt(bn.running_var + bn.eps)


class _WeightCandidates(torch.autograd.Function):
    """A layer's quantized weight in one autograd node: ``mix(Q_k(w * f) for k in candidates) / f``.

    ``Q_k``: LSQ per output channel (symmetric) for an integer candidate (step ``|step_k|.clamp_min(eps)``,
    gradient scale ``g_k``), values rounded to fp16 for 16, ``w * f`` itself for 32; ``f``: the BN folding
    factor (None: no BN). The integer candidates are fake-quantized together, as one batch of ``(K, *w.shape)``
    (steps stacked, per-candidate ranges as tensors), and mixed like :meth:`BitWidthChoice._mix` (one
    candidate: itself; two: ``lerp(Q_1, Q_0, mix_0)``; more: ``sum_k mix_k Q_k``). The backward reads the
    saved masks and step gradients: about a dozen kernels for the weight, the steps and the mixture weights,
    where the composite graph (folding, two quantizers, their step/zero-point bookkeeping, lerp) ran ~80.

    Equal to that composite in values (bit for bit, up to the last bit of the old ``grad_scale`` identity) and
    gradients (to float rounding: the weight's gradient is ``grad * sum_k c_k inside_k`` without the
    ``/ f * f`` round trip, the second of two candidates' step gradient uses ``mix_1`` for ``1 - mix_0``).
    ``consts``: ``(lo, hi, lo1, hi1, g)``, the integer candidates' ``qmin``, ``qmax``, ``qmin + 1``,
    ``qmax - 1`` shaped ``(K_int, 1, ...)`` and grad scales ``(K_int, 1)``; the integer candidates come first
    (candidates are sorted and integers have the fewest bits), their raw steps are ``steps``.
    """

    @staticmethod
    def forward(ctx, w: Tensor, factor: Tensor | None, mix: Tensor | None, kinds: tuple[int, ...],
                consts: tuple[Tensor, ...], *steps: Tensor) -> Tensor:
        lo, hi, lo1, hi1, g = consts
        wf = w * factor if factor is not None else w
        k_int = len(steps)
        raw = torch.stack(steps) if k_int > 1 else steps[0].unsqueeze(0)
        s = raw.abs().clamp_min_(_EPS).view(k_int, -1, *([1] * (w.dim() - 1)))
        single = len(kinds) == 1  # one candidate: no batch dimension, the result is the layer's weight
        if single:
            s, lo, hi, lo1, hi1 = s[0], lo[0], hi[0], lo1[0], hi1[0]
        v = wf / s if single else wf.unsqueeze(0) / s
        q = torch.round(v)
        inside = q.clamp(lo1, hi1).eq_(q)
        q.clamp_(lo, hi)
        ds = torch.addcmul(q, inside, v, value=-1.0, out=v)
        quantized = q.mul_(s)
        ctx.kinds = kinds
        if single:
            ctx.save_for_backward(inside, ds, None, None, factor, None, raw, g)
            return quantized.div_(factor) if factor is not None else quantized
        rows = [quantized[i] for i in range(k_int)] + [_float_row(wf, b) for b in kinds[k_int:]]
        if len(rows) == 2:
            out = torch.lerp(rows[1], rows[0], mix[0].to(w.dtype))
        else:
            out = rows[0] * mix[0]
            for i in range(1, len(rows)):
                out = out + rows[i] * mix[i]
        ctx.save_for_backward(inside, ds, quantized, wf if len(kinds) > k_int else None, factor, mix, raw, g)
        return out.div_(factor) if factor is not None else out

    @staticmethod
    def backward(ctx, grad: Tensor):
        inside, ds, quantized, wf, factor, mix, raw, g = ctx.saved_tensors
        kinds = ctx.kinds
        k, k_int = len(kinds), raw.shape[0]
        need_w, _, need_mix = ctx.needs_input_grad[:3]
        need_steps = any(ctx.needs_input_grad[5:])
        gf = grad / factor if factor is not None else grad
        dw = d_mix = d_steps = None
        if need_w:  # d out / d w = sum_k c_k inside_k (fp candidates pass everything: inside = 1)
            if k == 1:
                mixed = inside
            elif k == 2 and k_int == 2:
                mixed = torch.lerp(inside[1], inside[0], mix[0].to(grad.dtype))
            else:
                c = torch.stack([mix[0], 1 - mix[0]]) if k == 2 else mix
                mixed = (inside * c[:k_int].reshape(k_int, *([1] * grad.dim()))).sum(0)
                if k > k_int:
                    mixed = mixed + c[k_int:].sum()
            dw = grad * mixed
        if need_mix and k > 1:
            rows = [quantized[i] for i in range(k_int)] + [_float_row(wf, b) for b in kinds[k_int:]]
            flat = gf.reshape(-1)
            if k == 2:  # lerp(Q_1, Q_0, m_0): only m_0 is read
                d_mix = F.pad(torch.dot(flat, (rows[0] - rows[1]).reshape(-1)).reshape(1), (0, 1))
            else:
                d_mix = torch.stack([torch.dot(flat, r.reshape(-1)) for r in rows])
        if need_steps:
            if k == 1:
                d_steps = (gf * ds).sum(dim=tuple(range(1, grad.dim()))).unsqueeze(0)
            else:
                d_steps = (gf.unsqueeze(0) * ds).sum(dim=tuple(range(2, grad.dim() + 1)))
            d_steps.mul_(step_gradient_sign(raw))
            d_steps.mul_(g if k == 1 else mix[:k_int].reshape(k_int, 1) * g)
        steps = tuple(d_steps[i] if d_steps is not None else None for i in range(k_int))
        return (dw, None, d_mix, None, None, *steps)


def _float_row(wf: Tensor, bits: int) -> Tensor:
    """A float candidate's value of the folded weight: fp16-rounded (16) or itself (32)."""
    return wf.to(torch.float16).to(wf.dtype) if bits == 16 else wf


class BitWidthChoice(nn.Module):
    """Weight parametrization + input quantizer choosing among ``candidates`` bit-widths for one layer.

    Args:
        out_channels: rows of the layer's weight (one weight step per output channel).
        candidates: bit counts from :data:`SUPPORTED_BITS`, e.g. ``(4, 8)`` or ``(4, 8, 32)``.
        mode: ``"soft"`` | ``"gumbel"`` | ``"hard"`` (see the module docstring).
        temperature: softmax temperature of the probabilities (> 0).
        bn: the BatchNorm that follows the layer, for simulated folding; held by reference only
            (not registered as a child, so the model's state dict does not duplicate it).
        min_activation_bits: the fewest bits an integer candidate's input activation gets
            (8: a 4-bit candidate is W4A8; 4: W4A4).
        quantize_output: also fake-quantize the layer's (BN-folded) output to 8 bits when an
            integer candidate runs (see :meth:`quantize_output`).
    """

    host_buffers = ("chosen",)  # read on the host by Python control flow: see host_attr

    def __init__(self, out_channels: int, candidates: tuple[int, ...] = (4, 8), mode: str = "soft",
                 temperature: float = 1.0, bn: nn.Module | None = None, min_activation_bits: int = 8,
                 quantize_output: bool = False):
        super().__init__()
        candidates = tuple(sorted({int(b) for b in candidates}))
        bad = [b for b in candidates if b not in SUPPORTED_BITS]
        if not candidates or bad:
            raise ConfigError(f"unsupported bit-width candidates {bad or candidates}; choose from {SUPPORTED_BITS} "
                              "(4/8 = integer, 16 = fp16, 32 = fp32)")
        self.candidates = candidates
        self.alpha = nn.Parameter(torch.zeros(len(candidates)))
        self.weight_quantizers = nn.ModuleDict({str(b): LsqQuantizer(b, signed=True, symmetric=True,
                                                                     channels=out_channels) for b in candidates if b <= 8})
        # candidate bits -> bits of its input activation (integer candidates only)
        self.activation_bits = {b: min(8, max(b, int(min_activation_bits))) for b in candidates if b <= 8}
        self.input_quantizers = nn.ModuleDict({str(a): LsqQuantizer(a, signed=False, symmetric=False)
                                               for a in sorted(set(self.activation_bits.values()))})
        self.register_buffer("chosen", torch.tensor(-1))  # index into candidates once hardened, else -1
        # recorded in the state dict so a checkpoint can be re-prepared (prepare_from_state_dict)
        self.register_buffer("candidate_bits", torch.tensor(candidates))
        self.register_buffer("min_activation_bits", torch.tensor(int(min_activation_bits)))
        self.register_buffer("folds_bn", torch.tensor(bn is not None))
        # 8-bit output quantizer for layers whose output feeds no quantized layer (e.g. a residual add),
        # so the runtime can fuse DQ -> Conv -> Q into an int8 kernel there too
        self.output_quantizer = LsqQuantizer(8, signed=False, symmetric=False) if quantize_output else None
        self._last_weights: Tensor | None = None
        self._bn = [bn]  # a list hides it from nn.Module registration
        self._step_weights: Tensor | None = None
        self._constants: dict = {}  # (kinds, device, dtype, ...) -> tensors of _weight_constants
        self.mode = mode
        self.temperature = temperature

    # --- configuration -------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown bit-width mode {mode!r}; use one of {', '.join(MODES)}")
        self._mode = mode

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not value > 0:
            raise ConfigError(f"bit-width softmax temperature must be > 0, got {value}")
        self._temperature = float(value)

    @property
    def bn(self) -> nn.Module | None:
        return self._bn[0]

    def extra_repr(self) -> str:
        chosen = f", chosen={self.chosen_bits}" if self.is_hard else ""
        return f"candidates={self.candidates}, mode={self.mode}{chosen}, folds_bn={self.bn is not None}"

    # --- probabilities the cost model reads ------------------------------------------------
    def probabilities(self) -> Tensor:
        """``softmax(alpha / T)`` over ``candidates`` (one-hot once hardened); differentiable."""
        if self.is_hard:
            return F.one_hot(self.chosen, len(self.candidates)).to(self.alpha.dtype)
        # alpha / 1.0 is alpha, in value and gradient: two kernels (forward and backward) saved per layer call
        return F.softmax(self.alpha / self.temperature if self.temperature != 1.0 else self.alpha, dim=0)

    def precision_probabilities(self) -> dict[str, Tensor]:
        """Probability per precision string of the cost tables ('int4', 'int8', 'fp16', 'fp32')."""
        p = self.probabilities()
        return {PRECISION_OF_BITS[b]: p[i] for i, b in enumerate(self.candidates)}

    def expected_bits(self) -> Tensor:
        """``sum_b p_b * b``: the expected bit-width (bits per weight), differentiable, for model-size costs."""
        bits = torch.tensor(self.candidates, dtype=self.alpha.dtype, device=self.alpha.device)
        return (self.probabilities() * bits).sum()

    @torch.no_grad()
    def lean_towards(self, bits: int, p: float) -> None:
        """Start the search at ``bits`` with probability ``p`` (the other candidates share ``1 - p`` evenly).

        A uniform start prices every layer at the mean of its candidates' costs (half an fp32 kernel and
        half an int8 one), which is neither deployment; starting at the deployment the targets were measured
        on keeps the first expected costs honest, so the multipliers do not spend the search undoing a phantom
        violation."""
        if bits not in self.candidates:
            raise ConfigError(f"cannot start this layer at {bits} bits; its candidates are {self.candidates}")
        if not 0 < p < 1:
            raise ConfigError(f"the starting probability must be in (0, 1), got {p}")
        n = len(self.candidates)
        self.alpha.zero_()
        if n > 1:
            self.alpha[self.candidates.index(bits)] = self.temperature * math.log(p * (n - 1) / (1 - p))

    # --- hard choice -----------------------------------------------------------------------
    @property
    def is_hard(self) -> bool:
        return host_attr(self, "chosen") >= 0  # read from the device once per change, not once per layer call

    @property
    def chosen_bits(self) -> int:
        """The bit-width in use: the hardened one, else the most probable (ties -> fewest bits)."""
        index = host_attr(self, "chosen") if self.is_hard else int(torch.argmax(self.alpha.detach()))
        return self.candidates[index]

    def harden(self, bits: int | None = None) -> int:
        """Fix the layer to ``bits`` (default: the argmax of ``alpha``) and switch to ``"hard"`` mode."""
        bits = self.chosen_bits if bits is None else int(bits)
        if bits not in self.candidates:
            raise ConfigError(f"cannot fix this layer to {bits} bits; its candidates are {self.candidates}")
        self.chosen.fill_(self.candidates.index(bits))
        self.mode = "hard"
        return bits

    @torch.no_grad()
    def init_weight_steps(self, weight: Tensor, method: str = "mse") -> None:
        """Initialize each integer candidate's per-channel weight step from the (BN-folded) ``weight``."""
        if self.bn is not None:
            weight = weight * bn_fold_factor(self.bn).reshape(-1, *([1] * (weight.dim() - 1)))
        for q in self.weight_quantizers.values():
            q.init_from(weight, method)

    # --- forward ---------------------------------------------------------------------------
    def _mixture_weights(self) -> Tensor:
        """Per-candidate weights for this forward pass (shared by weight and input); they sum to 1."""
        if self.is_hard or self.mode == "hard":
            index = self.candidates.index(self.chosen_bits)
            return F.one_hot(torch.tensor(index, device=self.alpha.device), len(self.candidates)).to(self.alpha)
        if self.mode == "gumbel" and self.training:
            return F.gumbel_softmax(self.alpha, tau=self.temperature, hard=True)
        if self.mode == "gumbel":  # eval: the most probable candidate, deterministic
            return F.one_hot(self.alpha.detach().argmax(), len(self.candidates)).to(self.alpha)
        return self.probabilities()

    def _single_path(self) -> bool:
        """Whether one candidate alone runs (hard, or Gumbel in eval: the argmax), without mixture weights."""
        return self.is_hard or self.mode == "hard" or (self.mode == "gumbel" and not self.training)

    def _quantize(self, value: Tensor, bits: int, quantizers: nn.ModuleDict) -> Tensor:
        if bits == 32:
            return value
        if bits == 16:
            return fp16_ste(value)
        return quantizers[str(bits)](value)

    def _mix(self, value: Tensor, quantizers: nn.ModuleDict, is_input: bool = False) -> Tensor:
        """``sum_b w_b Q_b(value)`` over the candidates, with the mixture weights of this call (summing to 1).

        Candidates that represent ``value`` alike (the inputs of W4A8 and W8A8 both pass the 8-bit
        activation quantizer) are one term with their summed weight; one term is ``Q(value)`` itself
        (its weight is 1 identically, so it carries no gradient to ``alpha``), fp16 + fp32 is one
        :func:`fp16_mixture` node, other pairs are one ``lerp`` (one pass; exact at one-hot weights), more
        are the plain weighted sum."""
        def represented(bits: int) -> int:
            return self.activation_bits[bits] if is_input and bits <= 8 else bits

        if self._single_path():
            return self._quantize(value, represented(self.chosen_bits), quantizers)
        groups: dict[int, list[int]] = {}
        for i, bits in enumerate(self.candidates):
            groups.setdefault(represented(bits), []).append(i)
        if len(groups) == 1:
            return self._quantize(value, next(iter(groups)), quantizers)
        weights = self._step_weights if self._step_weights is not None else self._mixture_weights()
        if set(groups) == {16, 32} and value.dtype == torch.float32:  # the GPU's fp16/fp32 search: one node
            idx = groups[16]
            return fp16_mixture(value, weights[idx].sum() if len(idx) > 1 else weights[idx[0]])
        terms = [(self._quantize(value, bits, quantizers), weights[idx].sum() if len(idx) > 1 else weights[idx[0]])
                 for bits, idx in groups.items()]
        if len(terms) == 2:
            (first, w_first), (second, _) = terms
            return torch.lerp(second, first, w_first.to(value.dtype))
        out = terms[0][0] * terms[0][1]
        for term, w in terms[1:]:
            out = out + term * w
        return out

    def begin_call(self) -> None:
        """Draw this layer call's mixture weights (one Gumbel sample per call, shared by weight and input)."""
        self._step_weights = None if self._single_path() else self._mixture_weights()

    def end_call(self) -> None:
        if self.output_quantizer is not None:  # kept for quantize_output, which runs after the layer
            self._last_weights = self._step_weights
        self._step_weights = None

    def __deepcopy__(self, memo: dict) -> "BitWidthChoice":
        # per-call mixture weights are non-leaf tensors, which deepcopy refuses; they are transient anyway
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            transient = key in ("_step_weights", "_last_weights")
            object.__setattr__(clone, key, None if transient else copy.deepcopy(value, memo))
        return clone

    def quantize_output(self, y: Tensor) -> Tensor:
        """The layer's (BN-folded) output, 8-bit quantized for integer candidates, mixed like the layer call."""
        if self.output_quantizer is None:
            return y
        weights, self._last_weights = self._last_weights, None
        integer = [i for i, b in enumerate(self.candidates) if b <= 8]
        if not integer:
            return y
        if self._single_path():
            return self.output_quantizer(y) if self.chosen_bits <= 8 else y
        q = self.output_quantizer(y)
        if len(integer) == len(self.candidates):  # every candidate quantizes the output: weight 1 identically
            return q
        weights = weights if weights is not None else self._mixture_weights()
        return torch.lerp(y, q, weights[integer].sum().to(y.dtype))

    def quantize_input(self, x: Tensor) -> Tensor:
        """The layer's input as the chosen precision (mixture) represents it."""
        return self._mix(x, self.input_quantizers, is_input=True)

    def forward(self, weight: Tensor) -> Tensor:
        """Parametrization of the layer weight: quantized (with BN folded in, then divided back out)."""
        bn = self.bn
        single = self._single_path()
        kinds = (self.chosen_bits,) if single else self.candidates
        if kinds[0] > 8:  # no integer candidate runs: fp16/fp32 only, a few cheap ops
            if bn is None or self.candidates == (32,):
                return self._mix(weight, self.weight_quantizers)
            factor = self._fold_factor(weight)
            return self._mix(weight * factor, self.weight_quantizers) / factor
        factor = self._fold_factor(weight) if bn is not None else None
        quantizers = [self.weight_quantizers[str(b)] for b in kinds if b <= 8]
        if not all(host_attr(q, "initialized") for q in quantizers):
            folded = weight.detach() * factor if factor is not None else weight.detach()
            for q in quantizers:
                q.ensure_initialized(folded)
        mix = None
        if len(kinds) > 1:
            mix = self._step_weights if self._step_weights is not None else self._mixture_weights()
        consts = self._weight_constants(kinds, weight)
        return _WeightCandidates.apply(weight, factor, mix, kinds, consts, *(q.step for q in quantizers))

    def _fold_factor(self, weight: Tensor) -> Tensor:
        """The BN folding factor shaped against ``weight`` (detached; tiny values replaced by 1e-12)."""
        with torch.no_grad():
            factor = bn_fold_factor(self.bn).reshape(-1, *([1] * (weight.dim() - 1)))
            return factor.masked_fill_(factor.abs() < 1e-12, 1e-12)

    def _weight_constants(self, kinds: tuple[int, ...], weight: Tensor) -> tuple[Tensor, ...]:
        """Integer ranges and LSQ grad scales of the integer candidates in ``kinds``, as tensors on ``weight``'s
        device, built once per layout (not every step: each would be a host -> device copy)."""
        per_channel = weight.numel() // max(1, weight.shape[0])
        key = (kinds, weight.device, weight.dtype, weight.dim(), per_channel)
        hit = self._constants.get(key)
        if hit is None:
            ints = [b for b in kinds if b <= 8]
            ranges = [integer_range(b, signed=True) for b in ints]
            shape = (len(ints), *([1] * weight.dim()))
            bounds = [torch.tensor([r[i] + d for r in ranges], dtype=weight.dtype, device=weight.device).reshape(shape)
                      for i, d in ((0, 0), (1, 0), (0, 1), (1, -1))]
            g = torch.tensor([1.0 / math.sqrt(max(1, per_channel) * r[1]) for r in ranges], dtype=weight.dtype,
                             device=weight.device).reshape(-1, 1)
            hit = self._constants[key] = (*bounds, g)
        return hit


def stacked_probabilities(choices: list[BitWidthChoice]) -> Tensor:
    """Every layer's :meth:`BitWidthChoice.probabilities` as the rows of one matrix (padded with zeros to the
    most candidates): one softmax for all soft layers that share their candidates' count and temperature
    (the search's case), else a stack of the rows."""
    if not choices:
        return torch.zeros(0, 0)
    width = max(len(c.candidates) for c in choices)
    soft = not any(c.is_hard for c in choices)
    if soft and all(len(c.candidates) == width and c.temperature == choices[0].temperature for c in choices):
        logits = torch.stack([c.alpha for c in choices])
        return F.softmax(logits / choices[0].temperature if choices[0].temperature != 1.0 else logits, dim=1)
    return torch.stack([F.pad(c.probabilities(), (0, width - len(c.candidates))) for c in choices])
