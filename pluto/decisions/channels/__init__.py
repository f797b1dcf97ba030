"""Channel pruning decisions: which channels are tied (graph), learnable gates, importance baselines.

Three lines prune any traceable model::

    graph = DependencyGraph.build(model, example_input)
    gates = attach_gates(model, graph)          # train with gates.keep_probabilities() in the cost
    small = pluto.materialize.prune.materialize(model)
"""
from pluto.decisions.channels.gates import ChannelGates, attach_gates, detach_gates, width_report
from pluto.decisions.channels.graph import PROTECTED, ChannelGroup, DependencyGraph, LayerChannels, trace
from pluto.decisions.channels.importance import IMPORTANCES, channel_importance, prune_by_importance

__all__ = [
    "ChannelGates", "ChannelGroup", "DependencyGraph", "IMPORTANCES", "LayerChannels", "PROTECTED",
    "attach_gates", "channel_importance", "detach_gates", "prune_by_importance", "trace", "width_report",
]
