"""The host calls hooks through pluggy: wrappers (new-style ``wrapper=True`` and old-style ``hookwrapper=True``)
run around lifecycle and registration hooks and may change the result, ``tryfirst`` / ``trylast`` order holds,
hook-call monitoring sees the calls, and a failure still names the plugin that raised it."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pluggy
import pytest

import ift
from ift.builtin_plugins.sources import JsonlSource
from ift.errors import PluginError
from ift.host import PluginHost


class _Memory(ift.InstructionSource):
    name = "memory"

    def records(self) -> list[ift.InstructionRecord]:
        return []


class _Extra(_Memory):
    name = "extra"


def test_new_style_wrapper_runs_around_a_lifecycle_hook(host: PluginHost) -> None:
    calls: list[Any] = []

    class Observer:
        @ift.hookimpl
        def ift_step_end(self, run_dir: str, event: dict[str, Any]) -> None:
            calls.append(("observer", event["step"]))

    class Timer:
        @ift.hookimpl(wrapper=True)
        def ift_step_end(self, run_dir: str, event: dict[str, Any]) -> Generator[None, Any, Any]:
            calls.append(("before", event["step"]))
            result = yield
            calls.append(("after", result))
            return result

    host.register(Observer(), "observer")
    host.register(Timer(), "timer")
    host.step_end("runs/x", {"step": 7})
    assert calls == [("before", 7), ("observer", 7), ("after", [])]


def test_old_style_hookwrapper_runs_around_a_lifecycle_hook(host: PluginHost) -> None:
    seen: list[Any] = []

    class Legacy:
        @ift.hookimpl(hookwrapper=True)
        def ift_run_end(self, run_dir: str, status: str, metrics: dict[str, Any]) -> Generator[None, Any, None]:
            seen.append(("before", status))
            outcome = yield
            seen.append(("after", outcome.exception))

    host.register(Legacy(), "legacy")
    host.run_end("runs/x", "completed", {})
    assert seen == [("before", "completed"), ("after", None)]


def test_a_wrapper_sees_and_changes_a_registration_hooks_result(host: PluginHost) -> None:
    class Adds:
        @ift.hookimpl
        def ift_register_sources(self) -> list[type]:
            return [_Memory]

    class Curator:  # drops the builtin jsonl source and adds one of its own
        @ift.hookimpl(wrapper=True)
        def ift_register_sources(self) -> Generator[None, Any, Any]:
            lists = yield
            assert any(_Memory in classes for classes in lists)
            return [[c for c in classes if c is not JsonlSource] for classes in lists] + [[_Extra]]

    host.register(Adds(), "adds", distribution="ift-adds", version="1.0")
    host.register(Curator(), "curator", distribution="ift-curator", version="2.0")
    assert "jsonl" not in host.names("source")
    assert host.get("source", "memory").plugin == "adds"
    extra = host.get("source", "extra")  # added by the wrapper: it owns it
    assert (extra.plugin, extra.distribution, extra.version) == ("curator", "ift-curator", "2.0")
    assert host.get("source", "csv").plugin == "sources"
    assert {row["name"]: row["registered"] for row in host.describe()}["curator"] == {"source": ["extra"]}


def test_an_old_style_wrapper_can_force_a_registration_result(host: PluginHost) -> None:
    class Only:
        @ift.hookimpl(hookwrapper=True)
        def ift_register_metrics(self) -> Generator[None, Any, None]:
            outcome = yield
            outcome.force_result([[c for c in classes if c.name == "loss"] for classes in outcome.get_result()])

    host.register(Only(), "only")
    assert host.names("metric") == ["loss"]
    assert host.get("metric", "loss").plugin == "metrics"


def test_tryfirst_and_trylast_order_is_honoured(host: PluginHost) -> None:
    order: list[str] = []

    def observer(label: str, **opts: bool) -> object:
        class Observer:
            @ift.hookimpl(**opts)
            def ift_run_start(self, run_dir: str, resolved: dict[str, Any]) -> None:
                order.append(label)

        return Observer()

    host.register(observer("last", trylast=True), "last")
    host.register(observer("plain-1"), "plain-1")
    host.register(observer("first", tryfirst=True), "first")
    host.register(observer("plain-2"), "plain-2")
    host.run_start("runs/x", {})
    assert order == ["first", "plain-2", "plain-1", "last"]  # pluggy: tryfirst, then newest first, trylast


def test_hook_call_monitoring_sees_lifecycle_and_registration_calls(host: PluginHost) -> None:
    seen: list[tuple[str, Any]] = []

    def before(hook_name: str, impls: Any, kwargs: Any) -> None:
        seen.append(("before", hook_name))

    def after(outcome: pluggy.Result[Any], hook_name: str, impls: Any, kwargs: Any) -> None:
        seen.append(("after", hook_name))

    undo = host.pm.add_hookcall_monitoring(before, after)
    try:
        host.evaluate_end("runs/x", "final", {"loss": 0.5})
        assert host.names("transform")
    finally:
        undo()
    assert seen[:2] == [("before", "ift_evaluate_end"), ("after", "ift_evaluate_end")]
    assert ("after", "ift_register_transforms") in seen


def test_tracing_logs_the_calls(host: PluginHost) -> None:
    lines: list[str] = []
    host.pm.trace.root.setwriter(lines.append)
    undo = host.pm.enable_tracing()
    try:
        host.step_end("runs/x", {"step": 3})
    finally:
        undo()
    assert any("ift_step_end" in line for line in lines)


def test_an_impl_failing_inside_a_wrapper_is_named_and_the_wrapper_sees_it(host: PluginHost) -> None:
    seen: list[BaseException] = []

    class Tracker:
        @ift.hookimpl
        def ift_step_end(self, run_dir: str, event: dict[str, Any]) -> None:
            raise ConnectionError("tracker offline")

    class Watcher:
        @ift.hookimpl(wrapper=True)
        def ift_step_end(self, run_dir: str, event: dict[str, Any]) -> Generator[None, Any, Any]:
            try:
                return (yield)
            except ConnectionError as exc:
                seen.append(exc)
                raise

    host.register(Tracker(), "tracker", distribution="ift-tracker", version="2.0")
    host.register(Watcher(), "watcher", distribution="ift-watcher", version="1.0")
    with pytest.raises(PluginError) as err:
        host.step_end("run", {"step": 40})
    assert str(err.value) == (
        "plugin 'tracker' (ift-tracker 2.0): ift_step_end (step 40) raised ConnectionError: tracker offline"
    )
    assert isinstance(err.value.__cause__, ConnectionError) and seen == [err.value.__cause__]


def test_a_wrapper_that_raises_its_own_error_is_the_one_named(host: PluginHost) -> None:
    class Strict:
        @ift.hookimpl(wrapper=True)
        def ift_run_end(self, run_dir: str, status: str, metrics: dict[str, Any]) -> Generator[None, Any, Any]:
            yield
            raise ValueError("no metrics")

    host.register(Strict(), "strict", distribution="ift-strict", version="0.1")
    with pytest.raises(
        PluginError,
        match=r"^plugin 'strict' \(ift-strict 0.1\): ift_run_end \(run end, completed\) "
        r"raised ValueError: no metrics$",
    ) as err:
        host.run_end("runs/x", "completed", {})
    assert isinstance(err.value.__cause__, ValueError)


def test_a_wrapper_that_swallows_a_failure_lets_the_run_go_on(host: PluginHost) -> None:
    class Flaky:
        @ift.hookimpl
        def ift_step_end(self, run_dir: str, event: dict[str, Any]) -> None:
            raise ConnectionError("offline")

    class Forgiving:
        @ift.hookimpl(wrapper=True)
        def ift_step_end(self, run_dir: str, event: dict[str, Any]) -> Generator[None, Any, Any]:
            try:
                return (yield)
            except ConnectionError:
                return []

    host.register(Flaky(), "flaky")
    host.register(Forgiving(), "forgiving")
    host.step_end("runs/x", {"step": 1})  # no error


def test_a_wrapper_that_never_yields_is_named(host: PluginHost) -> None:
    class Broken:
        @ift.hookimpl(wrapper=True)
        def ift_run_start(self, run_dir: str, resolved: dict[str, Any]) -> Generator[None, Any, Any]:
            if False:
                yield
            return None

    host.register(Broken(), "broken", distribution="ift-broken", version="3")
    with pytest.raises(
        PluginError,
        match=r"plugin 'broken' \(ift-broken 3\): ift_run_start \(run start\) raised "
        r"RuntimeError: wrap_controller at 'ift_run_start' .* did not yield",
    ):
        host.run_start("runs/x", {})


def test_a_registration_wrapper_failure_names_its_plugin(host: PluginHost) -> None:
    class Breaks:
        @ift.hookimpl(wrapper=True)
        def ift_register_renderers(self) -> Generator[None, Any, Any]:
            yield
            raise RuntimeError("boom")

    host.register(Breaks(), "breaks", distribution="ift-breaks")
    with pytest.raises(PluginError) as info:
        _ = host.registry
    assert str(info.value) == "plugin 'breaks' (from ift-breaks): ift_register_renderers() raised RuntimeError: boom"


def test_failures_are_named_in_threads_calling_hooks_at_once(host: PluginHost) -> None:
    import threading

    barrier = threading.Barrier(2)

    class Slow:
        @ift.hookimpl
        def ift_step_end(self, run_dir: str, event: dict[str, Any]) -> None:
            barrier.wait(timeout=10)  # both threads are inside a call at the same time
            if event["step"] == 2:
                raise ValueError("step two")

    host.register(Slow(), "slow", distribution="ift-slow", version="1")
    outcome: dict[int, BaseException | None] = {}

    def call(step: int) -> None:
        try:
            host.step_end("runs/x", {"step": step})
            outcome[step] = None
        except PluginError as exc:
            outcome[step] = exc

    threads = [threading.Thread(target=call, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert outcome[1] is None
    assert str(outcome[2]) == "plugin 'slow' (ift-slow 1): ift_step_end (step 2) raised ValueError: step two"
