"""What a model costs on a chip: per-op latency/energy tables measured on real hardware.

- ``ops``: ``OpSpec`` / ``extract_ops`` turn a model into the runtime units a table prices.
- ``table``: ``LatencyTable`` (CSV + JSON, validated on load), lookup with differentiable interpolation.
- ``expected``: ``expected_cost`` of soft decisions (channels, precisions, op choice) with gradients.
- ``model``: ``CostModel``, a run's differentiable cost of its decisions (times the measured correction).
- ``metrics``: the metric vocabulary (units, and whether a table or counting prices it).
- ``profiler`` / ``space`` / ``runtimes`` / ``energy``: ``pluto profile`` measuring a space into a table
  (interleaved rounds, reference kernels, measured alignment).
- ``measure``: ``Measurer``, the one way pluto times a model on the table's chip (local or remote runner).
- ``machine``: who measures (fingerprint by CPU flags); ``adapt``: few-shot adaptation to the machine at hand.
"""
from pluto.cost.expected import bits_to_precision, expected_cost, minimum_cost
from pluto.cost.ops import OpSpec, extract_ops
from pluto.cost.table import LatencyTable

__all__ = ["OpSpec", "extract_ops", "LatencyTable", "expected_cost", "minimum_cost", "bits_to_precision"]
