"""Sandboxed Jinja2 for recipe templates, and the ``{% generation %}`` block that marks trainable text.

A template wraps what the model must learn to produce in ``{% generation %}...{% endgeneration %}``.
The block emits private-use sentinel characters around its body; :func:`split_segments` turns the
rendered string into segments. The trainable span is therefore decided while the text is made, never
recovered later by searching token ids for a response marker.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ift.components import Segment

#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = [
    "GEN_END",
    "GEN_START",
    "MAX_VALUE_CHARS",
    "RenderBudgetExceeded",
    "contains_sentinel",
    "merge_segments",
    "sandboxed_environment",
    "split_segments",
    "time_budget",
]

GEN_START = "\ue000"
GEN_END = "\ue001"


class GenerationExtension(Extension):
    """``{% generation %}body{% endgeneration %}``: body is trainable."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_wrap"), [], [], body).set_lineno(lineno)

    def _wrap(self, caller: Callable[[], str]) -> str:
        return GEN_START + caller() + GEN_END


#: Largest string or list one template operation (``*``, ``+``, ``center``, ``indent``) may build; larger
#: ones are refused before they are built, so one expression cannot exhaust memory in a single step.
MAX_VALUE_CHARS = 10_000_000
#: Largest result of ``**`` in bits.
MAX_POWER_BITS = 1 << 16


class _NoFoldingCodeGenerator(CodeGenerator):
    """Leaves every expression to render time, where the budgets apply: Jinja otherwise evaluates constant
    expressions while compiling (``{{ "x" * 10**10 }}`` or ``{{ ""|center(10**10) }}`` would run inside
    ``from_string``, with no time or size limit)."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Any, finalize: Any) -> str:
        if not isinstance(node, (nodes.TemplateData, nodes.Const)):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with size limits on the operations that can build a huge value in one step."""

    code_generator_class = _NoFoldingCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                size = _size(seq)
                if size is not None and isinstance(count, int) and size * count > MAX_VALUE_CHARS:
                    raise RenderBudgetExceeded(f"'*' would build {size * count:,} items, more than {MAX_VALUE_CHARS:,}")
        elif operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and max(left.bit_length(), 1) * right > MAX_POWER_BITS
            ):
                raise RenderBudgetExceeded(
                    f"'**' would build a number of about {left.bit_length() * right:,} "
                    f"bits, more than {MAX_POWER_BITS:,}"
                )
        elif operator == "+":
            sizes = (_size(left), _size(right))
            if sizes[0] is not None and sizes[1] is not None and sizes[0] + sizes[1] > MAX_VALUE_CHARS:
                raise RenderBudgetExceeded(
                    f"'+' would build {sizes[0] + sizes[1]:,} items, more than {MAX_VALUE_CHARS:,}"
                )
        return super().call_binop(context, operator, left, right)


def _width_checked(name: str, filter_: Callable[..., Any]) -> Callable[..., Any]:
    def checked(value: Any, width: Any = 80, *args: Any, **kwargs: Any) -> Any:
        if isinstance(width, int) and width > MAX_VALUE_CHARS:
            raise RenderBudgetExceeded(f"{name}({width:,}) is wider than {MAX_VALUE_CHARS:,} characters")
        return filter_(value, width, *args, **kwargs)

    return checked


def sandboxed_environment(prepare: Callable[[Any], None] | None = None) -> ImmutableSandboxedEnvironment:
    """The environment every text template renders in: sandboxed, undefined variables are errors, nothing
    evaluated while compiling, and no single operation builds a value past :data:`MAX_VALUE_CHARS`."""
    env = BoundedSandbox(
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        extensions=[GenerationExtension],
        autoescape=False,
        optimized=False,
    )
    for name in ("center", "indent"):
        env.filters[name] = _width_checked(name, env.filters[name])
    if prepare is not None:
        prepare(env)
    return env


def split_segments(text: str) -> list[Segment]:
    """Split text with generation sentinels into segments (empty pieces dropped)."""
    segments: list[Segment] = []
    trainable = False
    pos = 0
    while True:  # str.find works through the text in C: a loop over characters cost ~0.2 ms per example
        start, end = text.find(GEN_START, pos), text.find(GEN_END, pos)
        if start < 0 and end < 0:
            break
        at = min(i for i in (start, end) if i >= 0)
        opening = at == start
        if opening == trainable:
            raise ValueError("nested or unbalanced {% generation %} blocks")
        if at > pos:
            segments.append(Segment(text[pos:at], trainable))
        trainable, pos = opening, at + 1
    if trainable:
        raise ValueError("unclosed {% generation %} block")
    if pos < len(text):
        segments.append(Segment(text[pos:], trainable))
    return merge_segments(segments)


def merge_segments(segments: list[Segment]) -> list[Segment]:
    """Join neighbours with the same flag and drop empty ones."""
    merged: list[Segment] = []
    for seg in segments:
        if not seg.text:
            continue
        if merged and merged[-1].trainable == seg.trainable:
            merged[-1] = Segment(merged[-1].text + seg.text, seg.trainable)
        else:
            merged.append(seg)
    return merged


def contains_sentinel(text: str) -> bool:
    return GEN_START in text or GEN_END in text


class RenderBudgetExceeded(Exception):
    """A template took too long or produced too much text."""


class _GCClock:
    """Seconds spent in the cyclic garbage collector since it was installed (a ``gc.callbacks`` entry)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._began: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began is not None:
            self.total += time.perf_counter() - self._began
            self._began = None

    @property
    def collecting(self) -> bool:
        return self._began is not None


_GC_CALLBACK_CODE = _GCClock.__call__.__code__


@contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Interrupt a render that runs longer than ``seconds`` (main thread only; elsewhere no limit).

    Pauses of the cyclic garbage collector are not charged to the budget: a full collection over the many objects
    of a large run (1.4 s at a million records) is the process's cost, not the template's. When the timer fires
    and part of the elapsed time was spent collecting, it is set again for what is left of the budget."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    clock = _GCClock()
    began = time.perf_counter()

    def expire(signum: int, frame: Any) -> None:
        if clock.collecting or (frame is not None and frame.f_code is _GC_CALLBACK_CODE):
            # inside a collection (an exception raised in a gc callback would be swallowed): ask again just after
            signal.setitimer(signal.ITIMER_REAL, 1e-3)
            return
        charged = time.perf_counter() - began - clock.total
        if charged < seconds:
            signal.setitimer(signal.ITIMER_REAL, max(seconds - charged, 1e-4))
            return
        raise RenderBudgetExceeded(f"rendering took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    gc.callbacks.append(clock)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        gc.callbacks.remove(clock)
