"""The Jinja sandbox operators' templates run in, and the check of whether a template uses a
subscriber's values in a way marks cannot stand in for."""

from __future__ import annotations

import functools
import itertools
import os
import posixpath
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, FileSystemLoader, nodes, pass_context
from jinja2.exceptions import SecurityError
from jinja2.loaders import split_template_path
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment

from digest_mailer.errors import RenderError

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
    if isinstance(node, nodes.Filter) and node.name == _CONCAT and isinstance(node.node,
                                                                               nodes.List):
        return any(alters_personal(c, passes, captured) for c in node.node.items)
    if isinstance(node, nodes.Not):
        return alters_personal(node.node, True, captured)
    return any(alters_personal(c, False, captured) for c in node.iter_child_nodes())


_CONCAT, _LOOP, _SPEND = "_dm_concat", "_dm_loop", "_dm_spend"
_BIG_NUMBER = re.compile(r"\d{7,}")  # a width or precision in a format string
_OBJECT = 1_000  # what an object counts for: about what its repr writes


def measure(value: Any, cap: int) -> int:
    """About how many characters `value` writes when printed, counting each reference (a list
    holding one string 1,000 times writes it 1,000 times); stops counting past `cap`, so the
    cost is bounded too."""
    total, stack = 0, [value]
    while stack and total <= cap:
        v = stack.pop()
        if isinstance(v, str | bytes):
            total += len(v)
        elif isinstance(v, bool | float | type(None)):
            total += 1
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        elif isinstance(v, dict):
            total += 1 + len(v)
            stack.extend(itertools.islice(itertools.chain(v.keys(), v.values()), cap))
        elif isinstance(v, list | tuple | set | frozenset):
            total += 1 + len(v)
            stack.extend(itertools.islice(v, cap))
        elif isinstance(v, Iterator | Context):
            total += 1  # consumed elsewhere, under the same limits
        else:
            total += _OBJECT
    return total


# What Jinja passes to a filter before its value (pass_context and the like): not sizes.
_PASSED = (Context, EvalContext, Environment)


def estimate(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *,
             method: bool, cap: int) -> int:
    """About how many characters a filter or a string method makes, for those that can make
    far more than they are given (a width, a count or a separator times the text); 0 for the
    others, whose result is measured once made."""
    def arg(i: int, key: str, default: Any = None) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    def size(v: Any) -> int:
        if isinstance(v, bool) or v is None:
            return 1
        return abs(v) if isinstance(v, int) else measure(v, cap)

    text: Any = value if isinstance(value, str | bytes) else ""
    n = size(value) if not isinstance(value, int) else 0
    nl, tab = ("\n", "\t") if isinstance(text, str) else (b"\n", b"\t")
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(n, size(arg(0, "width", 80)))
    if name == "indent":
        return n + (int(text.count(nl)) + 1) * size(arg(0, "width", 4))
    if name == "expandtabs":
        return n + int(text.count(tab)) * size(arg(0, "tabsize", 8))
    if name == "replace":
        old, new = arg(0, "old", ""), arg(1, "new", "")
        if not isinstance(old, str | bytes) or type(old) is not type(text):
            return n
        pattern: Any = old
        found: int = (len(text) + 1) if not old else text.count(pattern)
        return n + found * size(new)
    if name == "join":
        items, sep = (arg(0, "iterable", ()), value) if method else (value, arg(0, "d", ""))
        count = len(items) if isinstance(items, list | tuple | set | str | dict) else 1
        return measure(items, cap) + count * size(sep)
    if name == "wordwrap":
        width = max(size(arg(0, "width", 79)), 1)
        return n + (n // width + 1) * size(arg(2, "wrapstring", None) or "\n")
    if name == "translate":
        table = arg(0, "table", {})
        longest = max((size(v) for v in table.values()), default=1) if isinstance(
            table, dict) else 1
        return n * max(longest, 1)
    if name == "urlize":
        return n + (n // 4 + 1) * (size(arg(2, "target", "")) + size(arg(3, "rel", "")) + 40)
    if name in ("format", "format_map"):
        if isinstance(text, str) and _BIG_NUMBER.search(text):
            return cap + 1  # a width or precision of 7 digits
        stars = text.count("*") if isinstance(text, str) else 0
        ints = sorted((abs(a) for a in args if isinstance(a, int) and not isinstance(a, bool)),
                      reverse=True)
        return n + sum(ints[:stars]) + sum(measure(a, cap) for a in (*args, *kwargs.values()))
    if name in ("batch", "slice"):
        return size(arg(0, "linecount" if name == "batch" else "slices", 1))
    return 0


@dataclass(slots=True)
class _Budget:
    deadline: float
    output: int = 0


class Sandbox(ImmutableSandboxedEnvironment):
    """Operators' templates cannot reach Python objects (the sandbox) nor change the values
    they are given (immutable), and one render is bounded in time and in what it builds: a
    deadline checked at every call, filter and loop step; each value it makes, and all it
    writes, capped; numbers kept to a sane size. Past a bound, a SecurityError that the
    renderer reports as that template's fault."""

    intercepted_binops = frozenset({"**", "*", "+", "%"})
    LIMIT = 100_000  # a string or list repeated with `*`
    VALUE = 5_000_000  # characters a value may hold (a whole body passed through a filter)
    OUTPUT = 20_000_000  # characters one render may write, captured blocks included
    INT_BITS = 10_000
    SECONDS = 10.0

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=self._finalize, **options)
        self.globals.pop("lipsum", None)  # random text: a fast path could never match it
        self.filters = {name: self._guarded(f) for name, f in self.filters.items()}
        # Marked as needing the context, so Jinja never runs them at compile time.
        self.filters[_CONCAT] = pass_context(functools.partial(Sandbox._concat, self))
        self.filters[_LOOP] = pass_context(functools.partial(Sandbox._loop, self))
        self.filters[_SPEND] = pass_context(functools.partial(Sandbox._spend, self))
        self._budget: _Budget | None = None

    @contextmanager
    def bounded(self) -> Iterator[None]:
        """The bounds of one render (a template and what it includes)."""
        outer, self._budget = self._budget, _Budget(time.monotonic() + self.SECONDS)
        try:
            yield
        finally:
            self._budget = outer

    def _tick(self) -> None:
        if self._budget is not None and time.monotonic() > self._budget.deadline:
            raise SecurityError(f"the template took longer than {self.SECONDS:g} s to render")

    def _write(self, size: int) -> None:
        if self._budget is not None:
            self._budget.output += size
            if self._budget.output > self.OUTPUT:
                raise SecurityError(f"the template writes more than {self.OUTPUT:,} "
                                    "characters")

    def _sized(self, value: Any) -> Any:
        if measure(value, self.VALUE) > self.VALUE:
            raise SecurityError(f"a value of more than {self.VALUE:,} characters")
        return value

    def _listed(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Iterators made lists, bounded, so that their size can be known."""
        def listed(v: Any) -> Any:
            if isinstance(v, Iterator) and not isinstance(v, str):
                items = list(itertools.islice(v, self.LIMIT + 1))
                if len(items) > self.LIMIT:
                    raise SecurityError(f"a sequence of more than {self.LIMIT:,} items")
                return items
            return v

        return tuple(listed(a) for a in args), {k: listed(v) for k, v in kwargs.items()}

    def _precheck(self, name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                  *, method: bool) -> None:
        made = estimate(name, value, args, kwargs, method=method, cap=self.VALUE)
        if made > self.VALUE:
            raise SecurityError(f"{name} would make about {made:,} characters, over "
                                f"{self.VALUE:,}")

    def _guarded(self, f: Callable[..., Any]) -> Callable[..., Any]:
        name = f.__name__.removeprefix("do_")

        @functools.wraps(f)  # keeps Jinja's pass_context marks
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._tick()
            args, kwargs = self._listed(args, kwargs)
            given = [i for i, a in enumerate(args) if not isinstance(a, _PASSED)]
            if given:
                first = given[0]
                self._precheck(name, args[first], args[first + 1:], kwargs, method=False)
            return self._sized(f(*args, **kwargs))
        return guarded

    def call(self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        self._tick()
        args, kwargs = self._listed(args, kwargs)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | bytes):  # 'x'.ljust(n), sep.join(items), ...
            self._precheck(getattr(__obj, "__name__", ""), owner, args, kwargs, method=True)
        return self._sized(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and _BIG_NUMBER.search(owner):
            raise SecurityError("a width or precision of 7 digits or more")
        return super().wrap_str_format(value)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self._tick()
        if operator == "**" and isinstance(right, int):
            if abs(right) > 64:
                raise SecurityError(f"power {right} is over the limit (64)")
            if isinstance(left, int) and left.bit_length() * abs(right) > self.INT_BITS:
                raise SecurityError(f"a number of more than {self.INT_BITS} bits")
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > self.INT_BITS:
                raise SecurityError(f"a number of more than {self.INT_BITS} bits")
            sized, times = ((left, right) if isinstance(right, int) else (right, left))
            if isinstance(sized, str | list | tuple) and isinstance(times, int) and \
                    measure(sized, self.LIMIT) * times > self.LIMIT:
                raise SecurityError("a repeated string or list over "
                                    f"{self.LIMIT} items")
        if operator == "%" and isinstance(left, str):
            self._precheck("format", left, right if isinstance(right, tuple) else (right,), {},
                           method=False)
        if operator == "+" and measure(left, self.VALUE) + measure(right, self.VALUE) > \
                self.VALUE:
            raise SecurityError(f"a value of more than {self.VALUE:,} characters")
        return self._sized(super().call_binop(context, operator, left, right))

    def _finalize(self, value: Any) -> Any:
        # Every {{ ... }}, in the body or captured by a block or a macro, counts.
        size = measure(value, self.VALUE)
        if size > self.VALUE:
            raise SecurityError(f"a value of more than {self.VALUE:,} characters")
        self._write(size)
        return value

    def _concat(self, context: Context, items: list[Any]) -> str:
        """`a ~ b`, as Jinja joins it, once the parts are known to fit."""
        self._tick()
        if sum(measure(i, self.VALUE) for i in items) > self.VALUE:
            raise SecurityError(f"a value of more than {self.VALUE:,} characters")
        join = markup_join if context.eval_ctx.autoescape else str_join
        return join(items)

    def _loop(self, _context: Context, iterable: Any) -> Iterator[Any]:
        for item in iterable:
            self._tick()
            yield item

    def _spend(self, _context: Context, size: int) -> str:
        """Static text written by an Output node (a loop repeats it)."""
        self._tick()
        self._write(size)
        return ""

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Every loop steps through _loop, every `~` through _concat, and every piece of
        static text counts towards OUTPUT."""
        tree = super()._parse(source, name, filename)
        # One pass over the tree (iterative: a deep template must not exhaust the stack).
        stack: list[nodes.Node] = [tree]
        while stack:
            node = stack.pop()
            if isinstance(node, nodes.For):
                node.iter = nodes.Filter(node.iter, _LOOP, [], [], None, None,
                                         lineno=node.iter.lineno)
            if isinstance(node, nodes.Output):
                static = sum(len(n.data) for n in node.nodes
                             if isinstance(n, nodes.TemplateData))
                if static:
                    node.nodes.insert(0, nodes.Filter(nodes.Const(static), _SPEND, [], [],
                                                      None, None, lineno=node.lineno))
            for field in node.fields:
                value = getattr(node, field, None)
                if isinstance(value, nodes.Node):
                    setattr(node, field, _concat_node(value))
                    stack.append(getattr(node, field))
                elif isinstance(value, list):
                    for i, item in enumerate(value):
                        if isinstance(item, nodes.Node):
                            value[i] = _concat_node(item)
                            stack.append(value[i])
        return tree


def _concat_node(node: nodes.Node) -> nodes.Node:
    """`a ~ b` as a call of _concat, which checks the size before joining."""
    if not isinstance(node, nodes.Concat):
        return node
    return nodes.Filter(nodes.List(node.nodes, lineno=node.lineno), _CONCAT, [], [], None,
                        None, lineno=node.lineno)


MAX_TEMPLATE_BYTES = 1_000_000


class TemplateLoader(FileSystemLoader):
    """Jinja's file loader, but a template file must be a regular UTF-8 file under 1 MB: a
    FIFO or a folder of that name was skipped in silence (the shipped one used instead), a
    300 MB file took 1.5 GB to load, and a Latin-1 file stopped check and run on a
    UnicodeDecodeError traceback."""

    def get_source(self, environment: Environment, template: str
                   ) -> tuple[str, str, Callable[[], bool]]:
        pieces = split_template_path(template)
        for folder in self.searchpath:
            filename = posixpath.join(folder, *pieces)
            if not os.path.lexists(filename):
                continue
            hint = f"fix {filename} or remove it"
            try:
                info = os.stat(filename)
            except OSError as e:
                raise RenderError(f"{filename}: cannot read: {e.strerror}", hint=hint) from e
            if not stat.S_ISREG(info.st_mode):
                raise RenderError(f"{filename}: not a regular file", hint=hint)
            if info.st_size > MAX_TEMPLATE_BYTES:
                raise RenderError(f"{filename}: {info.st_size:,} bytes, over the "
                                  f"{MAX_TEMPLATE_BYTES:,} a template may have", hint=hint)
            try:
                return super().get_source(environment, template)
            except UnicodeDecodeError as e:
                raise RenderError(f"{filename}: not UTF-8 text (byte {e.start})",
                                  hint=hint) from e
            except OSError as e:
                raise RenderError(f"{filename}: cannot read: {e.strerror}", hint=hint) from e
        return super().get_source(environment, template)  # TemplateNotFound, as Jinja says
