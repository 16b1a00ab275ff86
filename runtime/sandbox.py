"""A Jinja2 sandbox with resource bounds, for chat templates: untrusted code from a downloaded model file.

Jinja2's ImmutableSandboxedEnvironment already refuses attribute escapes (`__class__`, `__globals__`) and
mutation of lists and dicts, and caps `range` at 100000 items. It does not bound what a template may build or how
long it may run: `'x' * 3000000000`, `center(10**10)` or nested `range(100000)` loops take gigabytes or minutes.
`BoundedEnvironment` adds, for one `render` call:
- size: no string or list a template builds (with `+`, `*`, `~`, `%`, `**`, a method or a filter) may exceed
  MAX_CHARS items, checked *before* it is built, and all of them together may not exceed MAX_TOTAL;
- output: the rendered text may not exceed MAX_CHARS;
- time: the template's own code stops after MAX_SECONDS (a trace function on the template's frames only);
- `lipsum` is gone (no real template uses it; its `n` multiplies output).
Every violation, and every exception a template raises (`1/0`, an overflowing `range`), is a TemplateBoundError
(the caller turns it into ChatTemplateError).
"""

import functools
import re
import sys
import threading
import time

from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_CHARS = 1 << 23  # longest string/list a template may build, and its output: 8 Mi (far beyond any context)
MAX_TOTAL = 1 << 27  # everything a render builds, summed
MAX_SECONDS = 5.0
MAX_POW_BITS = 1 << 16  # ints a ** b may produce
_DIGITS = re.compile(r"\d+")


class TemplateBoundError(Exception):
    """A template exceeded a bound (the message says which) or raised."""


def _tally(x, depth: int = 2, *, of_str, of_other: int) -> int:
    """A count over a value: of_str(s) for a string, of_other for anything else, a container's length plus (two levels
    down) its elements' counts."""
    if isinstance(x, str):
        return of_str(x)
    if isinstance(x, dict):
        x = list(x.items())
    if isinstance(x, (list, tuple)):
        return len(x) + (sum(_tally(e, depth - 1, of_str=of_str, of_other=of_other) for e in x) if depth > 0 else 0)
    return of_other


# items a value holds: characters of a string, elements (and, two levels down, their sizes) of containers
_size = functools.partial(_tally, of_str=len, of_other=1)
# places where an int argument can repeat itself: line breaks and tabs of strings, items of containers
# (`indent(width)`, `expandtabs(n)`, `tojson(indent=n)`)
_breaks = functools.partial(_tally, of_str=lambda s: s.count("\n") + s.count("\t"), of_other=0)


class _Budget:
    """What one render may still build, and until when it may run."""

    def __init__(self):
        self.left, self.deadline = MAX_TOTAL, time.monotonic() + MAX_SECONDS

    def spend(self, n: int, what: str):
        if n > MAX_CHARS:
            raise TemplateBoundError(f"{what} would build {n} items (at most {MAX_CHARS})")
        self.left -= n
        if self.left < 0:
            raise TemplateBoundError(f"the template builds more than {MAX_TOTAL} items in all")

    def trace(self, frame, event, arg):
        """sys.settrace hook: line events of template code only (their file name is the template's)."""
        return self._line if frame.f_code.co_filename == "<template>" else None

    def _line(self, frame, event, arg):
        if time.monotonic() > self.deadline:
            raise TemplateBoundError(f"the template ran longer than {MAX_SECONDS:g} s")
        return self._line


def _widths(fmt) -> int:
    """The largest number written in a format string (a field width such as '%999999999d' or '{:>999999999}')."""
    return max((int(d) for d in _DIGITS.findall(fmt)), default=0) if isinstance(fmt, str) else 0


def _estimate(args, kwargs, owner=None, name: str = "") -> int:
    """An upper bound of the size of a call's result, from its arguments and the object it is a method of."""
    values = [*args, *kwargs.values()] + ([owner] if owner is not None else [])
    n = sum(_size(v) for v in values)
    if name == "replace" and len(args) >= 2 and isinstance(args[1], str):
        n *= max(1, len(args[1]))
    if name in ("format", "format_map"):
        n += _widths(owner)
    return n + max(_ints(values)) * (1 + sum(_breaks(v) for v in values))


class _BoundedCodeGenerator(CodeGenerator):
    """Routes `~` (string concatenation, not an interceptable operator in Jinja2) through the budget."""

    def visit_Concat(self, node, frame):
        self.write("environment.concat_bounded((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset(["+", "*", "**", "%"])

    def __init__(self, filters=(), globals=(), **options):
        super().__init__(**options)
        del self.globals["lipsum"]
        self.globals.update(globals)
        self.filters.update(filters)
        self.filters = {name: _bounded_filter(self, name, f) for name, f in self.filters.items()}
        self._local = threading.local()  # the budget of the render running in this thread

    @property
    def _budget(self) -> "_Budget":
        return self._local.budget

    def render(self, template, **variables) -> str:
        """template.render(**variables) within the bounds."""
        self._local.budget = budget = _Budget()
        outer = sys.gettrace()
        sys.settrace(budget.trace)
        try:
            out, n = [], 0
            for piece in template.generate(**variables):
                n += len(piece)
                if n > MAX_CHARS:
                    raise TemplateBoundError(f"the rendered prompt exceeds {MAX_CHARS} characters")
                out.append(piece)
            return "".join(out)
        except TemplateBoundError:
            raise
        except Exception as e:  # the template's own errors: 1/0, an overflowing range, raise_exception(...)
            raise TemplateBoundError(f"{type(e).__name__}: {e}") from None
        finally:
            sys.settrace(outer)

    def concat_bounded(self, parts) -> str:
        parts = [str(p) for p in parts]
        self._budget.spend(sum(map(len, parts)), "'~'")
        return "".join(parts)

    def call_binop(self, context, op, left, right):
        if op == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right * abs(left).bit_length() > MAX_POW_BITS:
                raise TemplateBoundError(f"{left} ** {right} is too large")
        elif op == "*" and isinstance(left, int) != isinstance(right, int):
            self._budget.spend(_mul_size(left, right), "'*'")
        elif op == "+" and not isinstance(left, (int, float)):
            self._budget.spend(_size(left, 0) + _size(right, 0), "'+'")
        elif op == "%" and isinstance(left, str):
            stars = max(_ints(right)) if "*" in left else 0  # '%*d' takes its width from the arguments
            self._budget.spend(len(left) + _size(right) + _widths(left) + stars, "'%'")
        return super().call_binop(context, op, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja2's own spelling)
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        name = getattr(__obj, "__name__", "")
        __self._budget.spend(_estimate(args, kwargs, owner if isinstance(owner, (str, list, tuple, dict)) else None,
                                       name), f"{name or 'a call'}()")
        return super().call(__context, __obj, *args, **kwargs)


def _ints(x) -> list:
    xs = x if isinstance(x, (list, tuple)) else [x]
    return [abs(v) for v in xs if isinstance(v, int) and not isinstance(v, bool)] or [0]


def _mul_size(left, right) -> int:
    """Items of seq * n (either order); 0 for number * number."""
    seq, n = (left, right) if isinstance(right, int) else (right, left)
    return _size(seq, 0) * n if isinstance(seq, (str, list, tuple)) else 0


def _bounded_filter(env: BoundedEnvironment, name: str, f):
    """`f` with its arguments checked against the running render's budget before it runs."""

    @functools.wraps(f)  # keeps Jinja2's pass_context/pass_environment marks
    def bounded(*args, **kwargs):
        env._budget.spend(_estimate(args, kwargs), f"|{name}")
        return f(*args, **kwargs)

    return bounded
