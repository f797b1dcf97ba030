"""Differentiable, monotone piecewise-linear lookup over measured channel grids.

Pruning gates produce an *expected* channel count (a real number with a gradient); the cost of
an op at that count is read off the measured grid by linear interpolation in each channel axis
(bilinear for cin x cout). Bilinear interpolation reproduces any cost that is bilinear in
(cin, cout) exactly, which is what MACs are, so a coarse grid loses little. Outside the grid the
end segment's slope is extended (floored at zero), so gradients never vanish at the borders.

Measured grids are noisy; ``monotone`` makes them non-decreasing along each channel axis
(a running maximum), which keeps the interpolant monotone so that keeping more channels never
looks cheaper.
"""
from __future__ import annotations

import torch
from torch import Tensor


def monotone(values: Tensor) -> Tensor:
    """Running maximum along every axis: the smallest non-decreasing grid above the measurements."""
    out = values
    for dim in range(values.dim()):
        out = torch.cummax(out, dim=dim).values
    return out


def _segment(grid: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Left/right grid indices and the (unclamped) position t of x inside that segment."""
    n = grid.numel()
    idx = torch.searchsorted(grid, x.detach().reshape(1).to(grid.dtype)).clamp(1, n - 1)[0]
    lo, hi = idx - 1, idx
    t = (x - grid[lo]) / (grid[hi] - grid[lo])
    return lo, hi, t


def interp1d(grid: Tensor, values: Tensor, x: Tensor | float) -> Tensor:
    """Piecewise-linear ``values(grid)`` at ``x`` (scalar tensor, may require grad); linear extrapolation."""
    x = torch.as_tensor(x, dtype=values.dtype)
    if grid.numel() == 1:  # one measurement: cost proportional to channels
        return values[0] * x / grid[0]
    lo, hi, t = _segment(grid, x)
    return torch.clamp(values[lo] + t * (values[hi] - values[lo]), min=0.0)


def interp2d(grid_in: Tensor, grid_out: Tensor, values: Tensor, cin: Tensor | float, cout: Tensor | float) -> Tensor:
    """Bilinear ``values[cin, cout]`` at real-valued channel counts; linear extrapolation outside the grid."""
    cin = torch.as_tensor(cin, dtype=values.dtype)
    cout = torch.as_tensor(cout, dtype=values.dtype)
    if grid_in.numel() == 1:
        return interp1d(grid_out, values[0], cout) * cin / grid_in[0]
    if grid_out.numel() == 1:
        return interp1d(grid_in, values[:, 0], cin) * cout / grid_out[0]
    i0, i1, ti = _segment(grid_in, cin)
    o0, o1, to = _segment(grid_out, cout)
    v00, v01, v10, v11 = values[i0, o0], values[i0, o1], values[i1, o0], values[i1, o1]
    top = v00 + to * (v01 - v00)
    bottom = v10 + to * (v11 - v10)
    return torch.clamp(top + ti * (bottom - top), min=0.0)
