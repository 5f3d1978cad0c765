"""The IR graph's own operations."""

from __future__ import annotations

import numpy as np

from lnn_core.graph import Graph, Node


def _graph() -> Graph:
    """x -> a -> y (output); a's second output feeds a two-node dead chain, one using its own constant and one
    shared with a live node."""
    g = Graph()
    for t in ("x", "a0", "a1", "d0", "d1", "y"):
        g.add_tensor(t, "int8", (1, 4), 0)
    g.add_initializer("w_live", np.ones(4, np.int8), 0)
    g.add_initializer("w_dead", np.ones(4, np.int8), 0)
    g.inputs.append("x")
    g.add_node(Node("a", "Split2", ["x", "w_live"], ["a0", "a1"]))
    g.add_node(Node("dead1", "iqAdd", ["a1", "w_dead"], ["d0"]))
    g.add_node(Node("dead2", "iqAdd", ["d0", "w_live"], ["d1"]))
    g.add_node(Node("live", "Relu", ["a0"], ["y"]))
    g.outputs.append("y")
    return g


def test_prune_dead_removes_chains_nobody_reads_and_what_only_they_used():
    g = _graph()
    assert g.prune_dead() == ["dead2", "dead1"]
    assert [n.name for n in g.nodes] == ["a", "live"]
    assert "w_dead" not in g.initializers and "w_dead" not in g.tensors
    assert {"d0", "d1"}.isdisjoint(g.tensors)
    # a multi-output node stays when one output is read; its unread output and shared constants stay declared
    assert {"a1", "w_live", "x", "y"} <= set(g.tensors) and "w_live" in g.initializers
    assert g.prune_dead() == []


def test_prune_dead_keeps_graph_outputs_even_when_another_node_does_not_read_them():
    g = _graph()
    g.outputs.append("d1")
    assert g.prune_dead() == []
    assert len(g.nodes) == 4
