"""Calling hooks through pluggy while knowing which plugin each result and each failure came from.

The host calls every hook as ``pm.hook.<name>(...)``, so pluggy's semantics hold: ``wrapper=True`` and old-style
``hookwrapper=True`` implementations run around the others and may change the result, ``tryfirst`` / ``trylast``
order the calls, and ``pm.add_hookcall_monitoring`` / ``pm.enable_tracing`` see every call. pluggy itself does not
say which implementation raised or returned what, and ift's errors must name the plugin; so each implementation's
function is replaced, once, by one that notes the plugin's name on an exception leaving it and on the value it
returns. The replacement keeps the original's signature (pluggy reads the argument names when it registers the
implementation, before the swap) and, for wrappers, stays a generator that forwards everything pluggy sends or
throws into it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import pluggy

_MARK = "__ift_attributed__"


@dataclass
class HookImplFailed(Exception):
    """A hook implementation (``plugin``) raised ``error``; the host turns this into a :class:`ift.PluginError`."""

    plugin: str
    error: Exception


@dataclass(frozen=True)
class Returned:
    """What one implementation returned: ``value`` itself, and (a list or tuple) a copy taken when it returned,
    before a wrapper could change it. A wrapper's value is what it made of the whole result."""

    plugin: str
    value: Any
    snapshot: Any
    wrapper: bool


@dataclass
class _Call:
    #: every implementation that returned, in the order they returned (a wrapper after those inside it)
    returned: list[Returned] = field(default_factory=list)
    #: id(exception) -> (exception, plugin that raised it first)
    raised: dict[int, tuple[BaseException, str]] = field(default_factory=dict)


class AttributedHooks:
    """Calls hooks of one PluginManager through pluggy, recording which plugin returned or raised what."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._local = threading.local()  # each thread's own stack of calls in progress

    @property
    def _calls(self) -> list[_Call]:
        """This thread's calls in progress, innermost last (an implementation may itself call a hook)."""
        calls: list[_Call] | None = getattr(self._local, "calls", None)
        if calls is None:
            calls = self._local.calls = []
        return calls

    def call(self, hook_name: str, **kwargs: Any) -> tuple[Any, list[Returned]]:
        """``pm.hook.<hook_name>(**kwargs)`` and what each plugin returned. An exception from a plugin's code is
        raised as :class:`HookImplFailed` (the original chained); pluggy's own errors (a bug in ift) propagate."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if not getattr(impl.function, _MARK, False):
                # HookImpl.function is typed Final, but it is a plain slot that pluggy reads at each call.
                setattr(impl, "function", self._attributed(impl))  # noqa: B010
        record = _Call()
        self._calls.append(record)
        try:
            result = caller(**kwargs)
        except Exception as exc:
            raised = record.raised.get(id(exc))
            if raised is None or raised[0] is not exc:
                raise
            raise HookImplFailed(raised[1], exc) from exc
        finally:
            self._calls.pop()
        return result, record.returned

    # --- the replacement functions ---------------------------------------------------------------

    def _note_raised(self, exc: BaseException, plugin: str) -> None:
        if self._calls and id(exc) not in self._calls[-1].raised:  # the innermost plugin that let it out
            self._calls[-1].raised[id(exc)] = (exc, plugin)

    def _note_returned(self, plugin: str, value: Any, *, wrapper: bool = False) -> None:
        if self._calls:
            snapshot = tuple(value) if isinstance(value, (list, tuple)) else value
            self._calls[-1].returned.append(Returned(plugin, value, snapshot, wrapper))

    def _attributed(self, impl: Any) -> Callable[..., Any]:
        function, plugin = impl.function, impl.plugin_name
        if impl.wrapper or impl.hookwrapper:
            wrapper = self._attributed_wrapper(function, plugin, old_style=bool(impl.hookwrapper))
            setattr(wrapper, _MARK, True)
            return wrapper

        @functools.wraps(function)
        def attributed(*args: Any, **kwargs: Any) -> Any:
            try:
                value = function(*args, **kwargs)
            except BaseException as exc:
                self._note_raised(exc, plugin)
                raise
            self._note_returned(plugin, value)
            return value

        setattr(attributed, _MARK, True)
        return attributed

    def _attributed_wrapper(
        self, function: Callable[..., Any], plugin: str, *, old_style: bool
    ) -> Callable[..., Generator[Any, Any, Any]]:
        hooks = self

        @functools.wraps(function)
        def attributed(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            try:
                inner = function(*args, **kwargs)
                out = next(inner)
            except StopIteration:
                code = inner.gi_code
                error = RuntimeError(
                    f"wrap_controller at {code.co_name!r} {code.co_filename}:{code.co_firstlineno} did not yield"
                )
                hooks._note_raised(error, plugin)
                raise error from None
            except BaseException as exc:
                hooks._note_raised(exc, plugin)
                raise
            while True:
                thrown: BaseException | None = None
                try:
                    sent = yield out
                except GeneratorExit:
                    inner.close()
                    raise
                except BaseException as exc:
                    thrown = exc
                try:
                    out = inner.send(sent) if thrown is None else inner.throw(thrown)
                except StopIteration as stop:
                    if old_style:  # an old-style wrapper changes the Result it was sent
                        if thrown is None and sent.exception is None:
                            hooks._note_returned(plugin, sent.get_result(), wrapper=True)
                    else:
                        hooks._note_returned(plugin, stop.value, wrapper=True)
                    return stop.value
                except BaseException as exc:
                    if exc is not thrown:
                        hooks._note_raised(exc, plugin)
                    raise

        return attributed
