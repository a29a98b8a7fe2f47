"""The Jinja sandbox operators' templates run in, and the check of whether a template uses a
subscriber's values in a way marks cannot stand in for."""

from __future__ import annotations

from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

PERSONAL = frozenset({"name", "email", "unsubscribe_url"})
# Inside these, output is captured or transformed before it reaches the email.
_CAPTURING = (nodes.FilterBlock, nodes.AssignBlock, nodes.Macro, nodes.CallBlock,
              nodes.EvalContextModifier, nodes.With)


def alters_personal(node: nodes.Node, passes: bool = False, captured: bool = False) -> bool:
    """Whether a template uses a subscriber's value other than by printing it whole or testing
    its truth. Marks survive only those two uses (a mark is true exactly when the value is);
    anything else (a filter, a comparison, an index, a macro) must see the real value."""
    if isinstance(node, nodes.Name):
        return node.name in PERSONAL and node.ctx == "load" and not passes
    if isinstance(node, _CAPTURING):
        captured = True
    if isinstance(node, nodes.Output):
        return any(alters_personal(c, not captured, captured) for c in node.nodes)
    if isinstance(node, nodes.If):
        return (alters_personal(node.test, True, captured)
                or any(alters_personal(c, False, captured)
                       for c in (*node.body, *node.elif_, *node.else_)))
    if isinstance(node, nodes.CondExpr):
        return (alters_personal(node.test, True, captured)
                or any(alters_personal(c, passes, captured)
                       for c in (node.expr1, node.expr2) if c is not None))
    if isinstance(node, nodes.And | nodes.Or | nodes.Concat):
        return any(alters_personal(c, passes, captured) for c in node.iter_child_nodes())
    if isinstance(node, nodes.Not):
        return alters_personal(node.node, True, captured)
    return any(alters_personal(c, False, captured) for c in node.iter_child_nodes())


class Sandbox(SandboxedEnvironment):
    """Operators' templates cannot reach Python objects (the sandbox), nor make a huge number
    or string out of a small template."""

    intercepted_binops = frozenset({"**", "*"})
    LIMIT = 100_000

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise SecurityError(f"power {right} is over the limit (64)")
        if operator == "*":
            sized, times = ((left, right) if isinstance(right, int) else (right, left))
            if isinstance(sized, str | list | tuple) and isinstance(times, int) and \
                    len(sized) * times > self.LIMIT:
                raise SecurityError("a repeated string or list over "
                                                   f"{self.LIMIT} items")
        return super().call_binop(context, operator, left, right)
