"""Which IR nodes the Triton backend fuses into generated glue kernels (t2c/kernels/glue.py).

One pass over the nodes in order, greedy and maximal:
- a fusible elementwise node joins the open group of one of its inputs' producers when that
  group has the same shape (open groups of its other inputs with that shape merge into it),
  else an open group of that shape that reads one of the same values (siblings: cos and sin of
  one angle), or starts a new group;
- a row reduction over the last dim (softmax, sum, ...) joins the open group without a reduction
  that produces its input (the group becomes a row kernel), or is a row kernel by itself; later
  elementwise nodes of the row's shape or of the reduced one (one value per row) may join it
  (glue.allows_epilogue: the result broadcasts back over the row), never a second reduction;
- a group closes ("sealed") as soon as a node outside it reads one of its values, or when a
  reduction that takes no epilogue joins it. A closed group takes no more members, so each group can be launched where
  its last member was and every value it reads exists by then: the grouping cannot make a cycle.
0-d `full` constants read only by grouped nodes become literals in the kernel and are not emitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...ir.core import Graph, Node, dims_equal
from ...kernels.glue import GlueGroup, allows_epilogue
from ...kernels.glue_ops import constant_literal, elementwise_fusible, row_reduction


@dataclass
class _Open:
    group: GlueGroup
    shape: tuple
    sealed: bool = False
    merged_into: "_Open | None" = None

    def root(self) -> "_Open":
        g = self
        while g.merged_into is not None:
            g = g.merged_into
        return g


@dataclass
class FusionPlan:
    """Groups in launch order; `member` maps id(node) -> its group; `folded` the constants not emitted;
    `unused` the nodes of groups whose results nothing reads (dce's to remove; never launched)."""

    groups: list[GlueGroup] = field(default_factory=list)
    member: dict[int, GlueGroup] = field(default_factory=dict)
    folded: set[int] = field(default_factory=set)  # id(node) of 0-d fulls that only kernels read
    unused: set[int] = field(default_factory=set)


def _same_shape(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(dims_equal(x, y) for x, y in zip(a, b))


def plan_fusion(graph: Graph) -> FusionPlan:
    """Group `graph`'s glue into generated kernels (see the module docstring)."""
    constants: dict[int, float | int] = {}
    owner: dict[int, _Open] = {}  # id(value) -> the group that produces it
    opened: list[_Open] = []
    readers: dict[int, list[_Open]] = {}  # id(value) -> the groups whose members read it
    order = {id(n): i for i, n in enumerate(graph.nodes)}

    def seal_producers(node: Node, keep: "_Open | None") -> None:
        for v in node.inputs:
            g = owner.get(id(v))
            if g is not None and g.root() is not keep:
                g.root().sealed = True

    for node in graph.nodes:
        literal = constant_literal(node)
        if literal is not None:
            constants[id(node.outputs[0])] = literal
            continue
        tensors = [v for v in node.inputs if id(v) not in constants]
        if tensors and elementwise_fusible(node, constants):
            shape = node.outputs[0].type.shape
            candidates = []
            for v in tensors:
                g = owner.get(id(v))
                if g is not None:
                    g = g.root()
                    if not g.sealed and g not in candidates and (_same_shape(g.shape, shape) or (
                            g.group.tail is not None and _same_shape(g.group.tail.outputs[0].type.shape, shape))):
                        candidates.append(g)
            if not candidates:  # a sibling: an open group that reads one of the same values (cos and sin of one angle)
                for v in tensors:
                    for g in readers.get(id(v), []):
                        g = g.root()
                        if not g.sealed and g.group.tail is None and _same_shape(g.shape, shape) and g not in candidates:
                            candidates.append(g)
            if candidates:
                target = candidates[0]
                for other in candidates[1:]:  # both open: nothing outside reads either, merging is safe
                    if target.group.tail is None and other.group.tail is None:
                        target.group.nodes += other.group.nodes
                        other.merged_into = target
                target.group.nodes.append(node)
                target.group.nodes.sort(key=lambda n: order[id(n)])
            else:
                target = _Open(GlueGroup([node]), shape)
                opened.append(target)
            seal_producers(node, target)
            owner[id(node.outputs[0])] = target
            for v in tensors:
                readers.setdefault(id(v), []).append(target)
        elif row_reduction(node):
            g = owner.get(id(node.inputs[0]))
            g = g.root() if g is not None else None
            if g is not None and not g.sealed and g.group.tail is None and _same_shape(g.shape, node.inputs[0].type.shape):
                g.group.nodes.append(node)
                target = g
            else:
                seal_producers(node, None)
                target = _Open(GlueGroup([node]), node.inputs[0].type.shape)
                opened.append(target)
            target.sealed = not allows_epilogue(node)
            owner[id(node.outputs[0])] = target
        else:
            seal_producers(node, None)

    plan = FusionPlan()
    outputs = {id(v) for v in graph.output_values()}
    for g in opened:
        if g.merged_into is not None:
            continue
        group = g.group
        inside = {id(n) for n in group.nodes}
        for n in group.nodes:
            for v in n.inputs:
                if id(v) in constants:
                    group.constants[id(v)] = constants[id(v)]
                elif all(id(o) != id(v) for m in group.nodes for o in m.outputs) and all(v is not x for x in group.inputs):
                    group.inputs.append(v)
            out = n.outputs[0]
            if id(out) in outputs or any(id(u) not in inside for u in out.users):
                group.outputs.append(out)
        if not group.outputs:
            plan.unused.update(id(n) for n in group.nodes)
            continue
        plan.groups.append(group)
        for n in group.nodes:
            plan.member[id(n)] = group
    for node in graph.nodes:
        if id(node.outputs[0]) in constants and node.outputs[0].users and all(id(u) in plan.member for u in node.outputs[0].users) \
                and not any(node.outputs[0] is v for v in graph.output_values()):
            plan.folded.add(id(node))
    plan.groups.sort(key=lambda grp: order[id(grp.nodes[-1])])
    return plan

