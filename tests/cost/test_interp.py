import torch

from pluto.cost.interp import interp1d, interp2d, monotone


def test_monotone_running_max():
    values = torch.tensor([[1.0, 0.5, 2.0], [0.8, 3.0, 1.0]])
    out = monotone(values)
    assert (out.diff(dim=0) >= 0).all() and (out.diff(dim=1) >= 0).all()
    assert (out >= values).all()


def test_interp1d_exact_at_knots_linear_between_and_gradient():
    grid = torch.tensor([4.0, 8.0, 16.0])
    values = torch.tensor([1.0, 2.0, 6.0])
    assert torch.isclose(interp1d(grid, values, 8.0), torch.tensor(2.0))
    x = torch.tensor(12.0, requires_grad=True)
    y = interp1d(grid, values, x)
    y.backward()
    assert torch.isclose(y, torch.tensor(4.0)) and torch.isclose(x.grad, torch.tensor(0.5))
    below = torch.tensor(2.0, requires_grad=True)
    interp1d(grid, values, below).backward()
    assert below.grad > 0  # extrapolation keeps a gradient


def test_interp2d_reproduces_bilinear_costs_and_is_monotone():
    gi, go = torch.tensor([4.0, 16.0, 64.0]), torch.tensor([8.0, 32.0])
    f = lambda a, b: 0.5 + 0.01 * a * b + 0.1 * a  # noqa: E731  MAC-like: bilinear
    values = torch.stack([torch.stack([torch.tensor(float(f(a, b))) for b in go]) for a in gi])
    for a, b in [(10.0, 20.0), (40.0, 9.0), (64.0, 32.0)]:
        assert torch.isclose(interp2d(gi, go, values, a, b), torch.tensor(float(f(a, b))), rtol=1e-5)
    prev = None
    for c in torch.linspace(2, 80, 40):
        v = interp2d(gi, go, monotone(values), c, c)
        assert prev is None or v >= prev - 1e-9
        prev = v
    cin = torch.tensor(20.0, requires_grad=True)
    cout = torch.tensor(20.0, requires_grad=True)
    interp2d(gi, go, values, cin, cout).backward()
    assert cin.grad > 0 and cout.grad > 0
