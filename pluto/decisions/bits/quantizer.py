"""Learned-step-size fake quantization (LSQ, Esser et al. 2020) with straight-through gradients.

A :class:`LsqQuantizer` maps a float tensor ``x`` to the float value of its integer code::

    q     = clamp(round(x / s) + z, qmin, qmax)      # the integer the runtime stores
    x_hat = (q - z) * s                              # what the next op sees

which is exactly ONNX ``QuantizeLinear`` followed by ``DequantizeLinear`` (both round half to
even, as ``torch.round`` does), so the exported int8 model computes what the fake-quant model
trained on.

Conventions (chosen so that the int8 kernels of onnxruntime on x86/ARM, "U8S8", apply):

- **weights**: signed, **symmetric** (``z = 0``), **per output channel** (one step per row of
  the weight), range ``[-2^(b-1), 2^(b-1) - 1]``, e.g. ``[-128, 127]`` at 8 bits.
- **activations**: unsigned, **asymmetric** (a learned zero point ``z``, rounded in the forward
  pass and straight-through in the backward pass), **per tensor**, range ``[0, 2^b - 1]``.
  After a ReLU the zero point settles at 0 and the full range holds positive values.

Gradients: ``round`` passes its gradient straight through (STE); values clipped by ``clamp`` get
no gradient w.r.t. ``x``, and the step gets the LSQ gradient ``-x/s + round(x/s)`` inside the
range and ``qmin - z`` / ``qmax - z`` outside. The step's gradient is multiplied by
``g = 1 / sqrt(n * qmax)`` (``n`` = values per step: weights per output channel, or activation
values per sample), which LSQ shows keeps the step's update size in proportion to the weights'.

Initialization from statistics (:meth:`LsqQuantizer.init_from`): ``"mse"`` (default) picks the
clipping range, a fraction of ``[min, max]``, that minimizes the squared quantization error
of the observed values; ``"minmax"`` uses the full observed range; ``"lsq"`` is the paper's
``s = 2 mean|x| / sqrt(qmax)``.
"""
from __future__ import annotations

import math
import os
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pluto.errors import ConfigError

INIT_METHODS = ("mse", "minmax", "lsq")
_MSE_GRID = torch.linspace(0.15, 1.0, 35)
_EPS = 1e-8


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` (half to even) forward, identity gradient backward."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """Value ``x``, gradient multiplied by ``scale`` (LSQ's step-size gradient scaling)."""
    return x * scale + (x - x * scale).detach()


def fp16_ste(x: Tensor) -> Tensor:
    """Round to the nearest fp16 value forward (what an fp16 kernel stores), identity gradient backward."""
    return x + (x.to(torch.float16).to(x.dtype) - x).detach()


class _Fp16Mixture(torch.autograd.Function):
    """``x + w * (fp16(x) - x)``: the two-term fp16/fp32 mixture (``w``: the fp16 weight) as one autograd node.

    Its gradient to ``x`` is the incoming gradient itself (both terms pass it straight through), so the
    backward is one reduction, ``dL/dw = sum(grad * (fp16(x) - x))``, instead of ``lerp``'s per-term scaled
    copies and their sum; the forward is the rounding and one ``addcmul``."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        d = x.to(torch.float16).to(x.dtype).sub_(x)
        ctx.save_for_backward(d)
        return torch.addcmul(x, d, w)

    @staticmethod
    def backward(ctx, grad: Tensor):
        gw = None
        if ctx.needs_input_grad[1]:
            (d,) = ctx.saved_tensors
            gw = (torch.vdot(grad.reshape(-1), d.reshape(-1)) if grad.is_contiguous() and grad.dtype == d.dtype
                  else (grad * d).sum())
        return grad, gw


def fp16_mixture(x: Tensor, w: Tensor) -> Tensor:
    """``(1 - w) * x + w * fp16_ste(x)`` in value and gradient (``w``: a 0-dim weight), in one pass."""
    return _Fp16Mixture.apply(x, w.to(x.dtype))


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``t`` down to a shape it was broadcast from (the step's or zero point's shape)."""
    if t.shape == shape:
        return t
    lead = t.dim() - len(shape)
    dims = [d for d in range(t.dim()) if d < lead or shape[d - lead] == 1 and t.shape[d] != 1]
    return t.sum(dim=dims, keepdim=True).reshape(shape)


class _FakeQuantize(torch.autograd.Function):
    """``(clamp(round(x / s) + z, qmin, qmax) - z) * s`` with LSQ's straight-through gradients, in few passes.

    The forward runs the same float operations in the same order as the composite
    ``round_ste``/``clamp`` expression (so the values are bit-identical to it, and to ONNX QDQ);
    the backward reads two saved tensors (the in-range mask and the step's per-value gradient)
    instead of replaying about fifteen autograd nodes over the whole activation. Masks are float
    and applied by multiplication: ``torch.where`` on a bool mask is several times slower on CPUs.
    """

    @staticmethod
    def forward(ctx, x: Tensor, s: Tensor, z: Tensor | None, qmin: int, qmax: int) -> Tensor:
        v = x / s
        q = torch.round(v)
        if z is not None:
            q.add_(z)
        # 1.0 strictly inside (qmin, qmax), else 0.0: torch.clamp's gradient counts qmin and qmax as clipped
        inside = q.clamp(qmin + 1, qmax - 1).eq_(q)
        qz = q.clamp_(qmin, qmax)
        if z is not None:
            qz.sub_(z)
        # the step's gradient per value: round(x/s) - x/s in range, q - z where clipped
        ds = torch.addcmul(qz, inside, v, value=-1.0, out=v)
        ctx.save_for_backward(inside, ds, s)
        ctx.has_z = z is not None
        ctx.shapes = (s.shape, z.shape if z is not None else None)
        return qz.mul_(s)

    @staticmethod
    def backward(ctx, grad: Tensor):
        inside, ds, s = ctx.saved_tensors
        s_shape, z_shape = ctx.shapes
        dx = d_step = dz = None
        if ctx.needs_input_grad[0] or (ctx.has_z and ctx.needs_input_grad[2]):
            dx = grad * inside
        if ctx.needs_input_grad[1]:
            if s_shape.numel() == 1:  # per-tensor: one fused multiply-and-sum
                d_step = torch.dot(grad.reshape(-1), ds.reshape(-1)).reshape(s_shape)
            else:
                d_step = _sum_to(grad * ds, s_shape)
        if ctx.has_z and ctx.needs_input_grad[2]:  # out = (q - z) s: d/dz is 0 in range, -s where clipped
            clipped = grad - dx
            dz = _sum_to(clipped, z_shape) * -s if s.shape == z_shape else _sum_to(clipped * -s, z_shape)
        return (dx if ctx.needs_input_grad[0] else None), d_step, dz, None, None


def step_gradient_sign(step: Tensor) -> Tensor:
    """``d |step|.clamp_min(eps) / d step``: the sign of the step where ``|step| > eps``, else 0 (as autograd's
    ``abs`` then ``clamp_min``, whose gradient passes strictly above the bound), in two ops."""
    return F.hardshrink(step, _EPS).sgn_()


class _Lsq(torch.autograd.Function):
    """:class:`LsqQuantizer`'s whole forward in one node: step ``|step|.clamp_min(eps)`` with LSQ's gradient
    scale ``g``, zero point ``clamp(round(z))`` (straight-through round), then :class:`_FakeQuantize`.

    Equal to the composite ``grad_scale``/``round_ste``/``clamp`` expression it replaces, in values (up to
    the last bit of ``step * g + (step - step * g)``, which is ``step``) and gradients (to float rounding),
    including its edge cases: no step gradient where ``|step| <= eps`` or ``step == 0``, no zero-point
    gradient where ``round(z)`` lies on ``qmin``/``qmax`` or beyond (``clamp``'s gradient). Its backward
    launches a handful of kernels instead of the composite's ~30 (a GPU step at small batches is bound by
    launches). ``view``: the shape the per-channel vectors take against ``x``; ``()`` per tensor.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, zero_point: Tensor | None, qmin: int, qmax: int, g: float,
                view: tuple[int, ...], bounds: Tensor | None) -> Tensor:
        s = step.abs().clamp_min_(_EPS).view(view)
        kernels = _fused_kernels(x, s)
        if kernels is not None:  # one fused loop over x instead of seven passes (see fused_quantization)
            r = torch.round(zero_point) if zero_point is not None else None
            bounds = bounds if bounds is not None else torch.tensor((qmin, qmax, qmin + 1, qmax - 1), dtype=s.dtype)
            b = bounds if r is None else bounds - r.clamp(qmin, qmax).reshape(())
            bounds = (b[0], b[1], b[2], b[3])
            ctx.save_for_backward(x, s, step, r, *bounds)  # x is alive anyway (its producer saved it): no copy
            ctx.consts, ctx.fused = (qmin, qmax, g), kernels
            return _run_fused(kernels, 0, x, s, *bounds)
        ctx.fused = None
        v = x / s
        q = torch.round(v)
        r = None
        if zero_point is None:
            inside = q.clamp(qmin + 1, qmax - 1).eq_(q)
            qz = q.clamp_(qmin, qmax)
        else:  # clamp(round(v) + z, qmin, qmax) - z as clamp(round(v), qmin - z, qmax - z): integers, exact
            r = torch.round(zero_point)
            b = bounds.view(4, 1) - r.clamp(qmin, qmax).view(1, -1)  # rows: qmin, qmax, qmin + 1, qmax - 1
            inside = q.clamp(b[2].view(view), b[3].view(view)).eq_(q)
            qz = q.clamp_(b[0].view(view), b[1].view(view))
        ds = torch.addcmul(qz, inside, v, value=-1.0, out=v)
        ctx.save_for_backward(inside, ds, s, step, r)
        ctx.consts = (qmin, qmax, g)
        return qz.mul_(s)

    @staticmethod
    def backward(ctx, grad: Tensor):
        qmin, qmax, g = ctx.consts
        need_x, need_step, need_z = ctx.needs_input_grad[:3]
        dx = d_step = dz = None
        if ctx.fused is not None:  # per tensor: dx, sum(grad * ds) and sum(dx - grad) in one loop over grad and x
            x, s, step, r, *bounds = ctx.saved_tensors
            dx, d, clipped = _run_fused(ctx.fused, 1, grad, x, s, *bounds)
            if need_step:
                d_step = step_gradient_sign(step).mul_(d).mul_(g)
            if need_z:
                dz = r.clamp(qmin + 1, qmax - 1).eq_(r).mul_(s.reshape(r.shape)).mul_(clipped.reshape(r.shape))
            return (dx if need_x else None), d_step, dz, None, None, None, None, None
        inside, ds, s, step, r = ctx.saved_tensors
        if need_x or need_z:
            dx = grad * inside
        if need_step:
            if s.dim() == 0:  # per tensor: one fused multiply-and-sum
                d = torch.dot(grad.reshape(-1), ds.reshape(-1))
            else:
                d = _sum_to(grad * ds, s.shape).reshape(step.shape)
            d_step = step_gradient_sign(step).mul_(d).mul_(g)
        if need_z:  # out = (q - z) s: d/dz is 0 in range, -s where clipped; clamp(round(z)) passes strictly inside
            d = _sum_to(dx - grad, s.shape).reshape(r.shape)
            dz = r.clamp(qmin + 1, qmax - 1).eq_(r).mul_(s.reshape(r.shape)).mul_(d)
        return (dx if need_x else None), d_step, dz, None, None, None, None, None


FUSED_MODES = ("auto", "off")
FUSED_MIN_NUMEL = 1 << 15  # below this a call is cheap either way, and compiling it would not pay
_FUSED: dict = {"mode": os.environ.get("PLUTO_FUSED_QUANT", "auto"), "kernels": None, "error": None}


def fused_quantization(mode: str | None = None) -> str:
    """Whether per-tensor (activation) quantizers run as one fused CPU kernel: ``"auto"`` (default) or ``"off"``;
    returns the mode in force (call without an argument to read it). Initial value: ``$PLUTO_FUSED_QUANT``.

    Eagerly, an activation quantizer's forward is seven passes over the activation (divide, round, two clamps
    with tensor bounds, a compare, the step's per-value gradient, the rescale) and its backward three more, with
    three full-size temporaries: on a CPU that made QAT the largest share of a joint step (+0.48x of a plain
    ResNet-18 step). With ``"auto"``, a call on a CPU tensor of at least :data:`FUSED_MIN_NUMEL` values outside
    ``torch.compile`` runs :func:`_fused_forward` / :func:`_fused_backward` compiled by inductor (one vectorized
    C++ loop each: the forward reads ``x`` and writes the output, the backward reads the gradient and ``x`` and
    recomputes the mask; compiled once per process and shape family, seconds, cached on disk). Same
    values bit for bit (same float operations: the division is a division); gradients equal to float rounding
    (the sums are reduced in another order). Where inductor cannot compile (no C++ compiler), one warning and the
    eager path. GPUs keep the eager path (there a step is bound by launches; ``trainer.compile`` fuses them)."""
    if mode is not None:
        if mode not in FUSED_MODES:
            raise ConfigError(f"fused quantization mode {mode!r}: use one of {', '.join(FUSED_MODES)} "
                              "(or set PLUTO_FUSED_QUANT to one of them)")
        _FUSED["mode"] = mode
    return _FUSED["mode"]


def _fused_parts(x: Tensor, s: Tensor, lo: Tensor, hi: Tensor, lo1: Tensor, hi1: Tensor):
    """:class:`_Lsq`'s per-tensor math: ``(qz, inside, ds)`` with the integer bounds (zero point already
    subtracted) ``lo``/``hi`` and the strict interior ``lo1``/``hi1`` as 0-dim tensors."""
    v = x / s
    q = torch.round(v)
    inside = ((q >= lo1) & (q <= hi1)).to(x.dtype)
    qz = q.clamp(lo, hi)
    return qz, inside, qz - v * inside


def _fused_forward(x: Tensor, s: Tensor, lo: Tensor, hi: Tensor, lo1: Tensor, hi1: Tensor) -> Tensor:
    """The quantized value ``qz * s``: reads ``x``, writes the output, nothing else (the backward recomputes)."""
    return _fused_parts(x, s, lo, hi, lo1, hi1)[0] * s


def _fused_backward(grad: Tensor, x: Tensor, s: Tensor, lo: Tensor, hi: Tensor, lo1: Tensor, hi1: Tensor):
    """``(dx, sum(grad * ds), sum(dx - grad))``: the input's gradient and the per-tensor step's and zero point's
    unscaled sums, the mask and ``ds`` recomputed from ``x`` in the same loop."""
    _, inside, ds = _fused_parts(x, s, lo, hi, lo1, hi1)
    dx = grad * inside
    return dx, (grad * ds).sum(), (dx - grad).sum()


def _fused_kernels(x: Tensor, s: Tensor):
    """The compiled (forward, backward) pair when this call should use them, else None."""
    if (s.dim() != 0 or x.device.type != "cpu" or x.numel() < FUSED_MIN_NUMEL or _FUSED["mode"] == "off"
            or _FUSED["error"] is not None or torch.compiler.is_compiling()):
        return None
    if _FUSED["kernels"] is None:
        _FUSED["kernels"] = (torch.compile(_fused_forward), torch.compile(_fused_backward))
    return _FUSED["kernels"]


def _run_fused(kernels, which: int, *args):
    """``kernels[which](*args)``; if inductor cannot compile here, warn once and run the same math eagerly."""
    if _FUSED["error"] is None:
        try:
            return kernels[which](*args)
        except Exception as e:  # noqa: BLE001 - any compile failure (no C++ compiler, ...) falls back
            _FUSED["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"pluto: the fused CPU quantization kernel did not compile ({_FUSED['error']}); QAT "
                          "runs the eager path (slower). Install a C++ compiler (g++) for inductor, or set "
                          "PLUTO_FUSED_QUANT=off to silence this.", RuntimeWarning, stacklevel=3)
    return (_fused_forward, _fused_backward)[which](*args)


def fake_quantize(x: Tensor, s: Tensor, z: Tensor | None, qmin: int, qmax: int) -> Tensor:
    """``(clamp(round(x / s) + z, qmin, qmax) - z) * s``: the value of ONNX QuantizeLinear -> DequantizeLinear.

    ``s`` (> 0) and ``z`` (integer-valued; None = 0, symmetric) broadcast against ``x``. Gradients
    (LSQ, straight-through round): ``x`` gets the incoming gradient where ``round(x/s) + z`` lies
    strictly inside ``(qmin, qmax)`` and 0 where clipped (at ``qmin``/``qmax`` too, as
    ``torch.clamp``'s gradient); ``s`` gets ``round(x/s) - x/s`` in range and ``q - z`` where
    clipped; ``z`` gets 0 in range and ``-s`` where clipped. Values are bit-identical to the
    composite expression with :func:`round_ste`; gradients agree to float rounding.
    """
    return _FakeQuantize.apply(x, s, z, qmin, qmax)


def host_flag(flag: Tensor) -> bool:
    """``bool(flag)`` of a 0-dim buffer, read from the device once per change, not once per call.

    Reading a CUDA tensor's value waits for the GPU; a buffer that changes once in a run (a
    quantizer's ``initialized``, a choice's ``chosen``) is cached against the tensor's identity
    and version counter, which every in-place write (``fill_``, ``copy_``, ``load_state_dict``) bumps.
    """
    return bool(host_value(flag))


_HOST_VALUES: dict[int, tuple[weakref.ref, int, object]] = {}


def host_value(t: Tensor):
    """The Python value of a 0-dim tensor (see :func:`host_flag`), cached per tensor and version."""
    if t.is_inference():  # no version counter to key on
        return t.item()
    key = id(t)
    hit = _HOST_VALUES.get(key)
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    value = t.item()
    if len(_HOST_VALUES) > 4096:  # mostly dead tensors of discarded models: start over (live ones refill on use)
        _HOST_VALUES.clear()
    _HOST_VALUES[key] = (weakref.ref(t), t._version, value)
    return value


_MIRROR = "_host_mirror"


def host_attr(module: nn.Module, name: str):
    """The Python value of ``module``'s 0-dim buffer ``name`` (see :func:`host_value`), compile-friendly.

    Eagerly it reads the buffer (cached per version) and keeps the value in a plain dict on the module; under
    ``torch.compile`` it returns that dict's value, which dynamo guards on (a change recompiles) instead of
    breaking the graph at a device read. :func:`refresh_host_mirrors` runs before every compiled call
    (:func:`pluto.engine.compile.compile_fn`), so in-place writes to the buffer between calls are seen."""
    if torch.compiler.is_compiling():
        return getattr(module, _MIRROR)[name]
    value = host_value(getattr(module, name))
    mirror = module.__dict__.get(_MIRROR)
    if mirror is None:
        mirror = module.__dict__[_MIRROR] = {}
    mirror[name] = value
    return value


def refresh_host_mirrors(model: nn.Module) -> None:
    """(Re-)read every buffer a module of ``model`` lists in ``host_buffers`` into its mirror (cheap: cached per
    buffer version)."""
    for module in model.modules():
        for name in getattr(module, "host_buffers", ()):
            host_attr(module, name)


def integer_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-bit integer: signed two's complement or unsigned."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


class LsqQuantizer(nn.Module):
    """Fake-quantize to ``bits`` bits with a learned step (and, if asymmetric, a learned zero point).

    ``channels > 1`` makes it per-channel along ``axis`` (weights: axis 0, the output channel).
    The step is in the units of the quantized values (e.g. volts of activation, weight units);
    until :meth:`init_from` has run (or the first training forward initializes it from that
    batch) ``initialized`` is False.
    """

    host_buffers = ("initialized",)  # read on the host by Python control flow: see host_attr

    def __init__(self, bits: int, signed: bool, symmetric: bool, channels: int = 1, axis: int = 0):
        super().__init__()
        if not 2 <= bits <= 16:
            raise ConfigError(f"integer quantization needs 2..16 bits, got {bits}; use 16/32 for float precisions")
        if symmetric and not signed:
            raise ConfigError("a symmetric quantizer must be signed (zero point 0 in the middle of the range)")
        self.bits, self.signed, self.symmetric, self.axis = bits, signed, symmetric, axis
        self.qmin, self.qmax = integer_range(bits, signed)
        self.step = nn.Parameter(torch.ones(channels))
        if symmetric:
            self.register_buffer("zero_point", torch.zeros(channels))
        else:
            self.zero_point = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._bounds: dict = {}  # (device, dtype) -> the integer range as a tensor (see _range)

    @property
    def per_channel(self) -> bool:
        return self.step.numel() > 1

    def extra_repr(self) -> str:
        kind = "symmetric signed" if self.symmetric else ("asymmetric signed" if self.signed else "asymmetric unsigned")
        return f"bits={self.bits}, {kind}, range=[{self.qmin}, {self.qmax}], channels={self.step.numel()}"

    def _shape(self, x: Tensor, t: Tensor) -> Tensor:
        """Broadcast a per-channel vector against ``x`` along ``axis``."""
        if not self.per_channel:
            return t.reshape(())
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return t.reshape(shape)

    def _per_channel_rows(self, x: Tensor) -> Tensor:
        """``x`` as (channels, values) rows, or one row when per-tensor."""
        if not self.per_channel:
            return x.detach().reshape(1, -1)
        return x.detach().transpose(0, self.axis).reshape(x.shape[self.axis], -1)

    def scale_and_zero_point(self) -> tuple[Tensor, Tensor]:
        """The step ``s`` (> 0) and the integer zero point ``z`` as used in the forward pass (detached)."""
        s = self.step.detach().abs().clamp_min(_EPS)
        z = torch.round(self.zero_point.detach()).clamp(self.qmin, self.qmax)
        return s, z

    @torch.no_grad()
    def init_from(self, x: Tensor, method: str = "mse") -> None:
        """Set step (and zero point) from observed values ``x`` (weights, or a sample of activations)."""
        if method not in INIT_METHODS:
            raise ConfigError(f"unknown quantizer init {method!r}; use one of {', '.join(INIT_METHODS)}")
        rows = self._per_channel_rows(x).float()
        if method == "lsq":
            step = 2 * rows.abs().mean(dim=1) / math.sqrt(self.qmax)
            self.step.copy_(step.clamp_min(_EPS).to(self.step))
            if not self.symmetric:
                lo = rows.min(dim=1).values.clamp_max(0)
                self.zero_point.copy_(torch.round(self.qmin - lo / step.clamp_min(_EPS)).clamp(self.qmin, self.qmax))
            self.initialized.fill_(True)
            return
        grid = _MSE_GRID.to(rows.device) if method == "mse" else torch.ones(1, device=rows.device)
        best_err = torch.full((rows.shape[0],), float("inf"), device=rows.device)
        best_s = torch.ones(rows.shape[0], device=rows.device)
        best_z = torch.zeros(rows.shape[0], device=rows.device)
        for ratio in grid:
            s, z = self._range_to_params(rows, float(ratio))
            q = torch.clamp(torch.round(rows / s[:, None]) + z[:, None], self.qmin, self.qmax)
            err = ((q - z[:, None]) * s[:, None] - rows).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, s, best_s)
            best_z = torch.where(better, z, best_z)
        self.step.copy_(best_s.to(self.step))
        self.zero_point.copy_(best_z.to(self.zero_point))
        self.initialized.fill_(True)

    def _range_to_params(self, rows: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
        if self.symmetric:
            amax = rows.abs().amax(dim=1) * ratio
            return (amax / self.qmax).clamp_min(_EPS), torch.zeros_like(amax)
        lo = rows.amin(dim=1).clamp_max(0) * ratio
        hi = rows.amax(dim=1).clamp_min(0) * ratio
        s = ((hi - lo) / (self.qmax - self.qmin)).clamp_min(_EPS)
        z = torch.round(self.qmin - lo / s).clamp(self.qmin, self.qmax)
        return s, z

    def ensure_initialized(self, x: Tensor) -> None:
        """Initialize from ``x`` (this batch) if nothing did yet; in eval mode that is an error."""
        if not host_attr(self, "initialized"):
            if not self.training:
                raise ConfigError("quantizer used in eval mode before calibration; pass calibrate=... to prepare_qat, "
                                  "call pluto.decisions.bits.calibrate(model, data), or run one training step first")
            self.init_from(x if self.per_channel else x.detach().flatten()[: 1 << 20])

    def forward(self, x: Tensor) -> Tensor:
        self.ensure_initialized(x)
        n = x[0].numel() if not self.per_channel else x.numel() // self.step.numel()
        g = 1.0 / math.sqrt(max(1, n) * self.qmax)
        view = (-1,) + (1,) * (x.dim() - 1 - self.axis) if self.per_channel else ()
        if self.symmetric:
            return _Lsq.apply(x, self.step, None, self.qmin, self.qmax, g, view, None)
        return _Lsq.apply(x, self.step, self.zero_point, self.qmin, self.qmax, g, view, self._range(x))

    def _range(self, x: Tensor) -> Tensor:
        """``[qmin, qmax, qmin + 1, qmax - 1]`` on ``x``'s device, made once (not a host -> device copy per call)."""
        dtype = torch.promote_types(x.dtype, self.step.dtype)  # that of x / step, so the bounds are exact
        key = (x.device, dtype)
        bounds = self._bounds.get(key)
        if bounds is None:
            q = (self.qmin, self.qmax, self.qmin + 1, self.qmax - 1)
            bounds = self._bounds[key] = torch.tensor(q, dtype=dtype, device=x.device)
        return bounds
