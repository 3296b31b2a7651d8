"""The ``templated`` source: instruction records from structured rows and Jinja2 instruction templates.

Each task renders every row of its rows source: one of the task's phrasings (chosen per row from the seed
and the row's id, so a row keeps its wording when other rows are added), an answer template, optional
system prompt, label and answer choices. Templates render in the sandboxed environment with
``StrictUndefined``; variables are the row's columns plus ``task``, ``choices`` (when the task has
choices) and ``examples`` (``few_shot`` other rows, each with its rendered ``answer``).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jinja2 import Template, TemplateError, TemplateSyntaxError
from pydantic import Field, ValidationInfo, field_validator, model_validator

import ift
from ift.builtin_plugins.builders.nested import Row, key_of, nested_table, open_source, read_rows
from ift.templating import MAX_VALUE_CHARS, RenderBudgetExceeded, sandboxed_environment, time_budget

#: Time budget for compiling or rendering one instruction template for one row.
RENDER_SECONDS = 2.0


def _check_syntax(text: str) -> str:
    try:
        sandboxed_environment().parse(text)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error at line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise ValueError("the template nests too deeply to parse") from None
    return text


class TaskTemplate(ift.ComponentConfig):
    name: str = Field(description="Task label of the records (also the first part of their ids).")
    instructions: list[str] = Field(default_factory=list, description="Phrasings: Jinja2 templates.")
    instruction_files: list[str] = Field(
        default_factory=list, description="Phrasings in template files, relative to the recipe."
    )
    answer: str = Field(description="Jinja2 template of the answer.")
    system: str | None = Field(None, description="Jinja2 template of a system prompt.")
    choices: list[str] | None = Field(None, description="Answer choices of a classification task.")
    choices_column: str | None = Field(
        None, description="Column with each row's choices (a list, or '|'-separated text)."
    )
    label: str | None = Field(
        None, description="Jinja2 template of the label (default: the answer, when the task has choices)."
    )
    rows: dict[str, Any] | None = Field(None, description="This task's rows (default: the source's rows).")
    few_shot: int = Field(0, ge=0, description="Other rows given to the templates as `examples`.")

    @field_validator("instructions")
    @classmethod
    def _instructions_parse(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            try:
                _check_syntax(text)
            except ValueError as exc:
                raise ValueError(f"instructions[{i}]: {exc}") from None
        return value

    @field_validator("answer", "system", "label")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        return None if value is None else _check_syntax(value)

    @field_validator("rows", mode="before")
    @classmethod
    def _rows_table(cls, value: Any, info: ValidationInfo) -> Any:
        return None if value is None else nested_table(value, info.context)

    @model_validator(mode="after")
    def _consistent(self) -> TaskTemplate:
        if not self.instructions and not self.instruction_files:
            raise ValueError(f"task {self.name!r} needs at least one phrasing in instructions or instruction_files")
        if self.choices is not None and self.choices_column is not None:
            raise ValueError(f"task {self.name!r}: set choices or choices_column, not both")
        return self


class TemplatedConfig(ift.ComponentConfig):
    rows: dict[str, Any] | None = Field(
        None, description="Nested source of the rows, e.g. { source = 'csv', path = 'rows.csv' }."
    )
    tasks: list[TaskTemplate] = Field(min_length=1)
    seed: int = Field(0, description="Chooses each row's phrasing and few-shot examples.")
    id_column: str = Field("id", description="Column that identifies a row (default: its position).")

    @field_validator("rows", mode="before")
    @classmethod
    def _rows_table(cls, value: Any, info: ValidationInfo) -> Any:
        return None if value is None else nested_table(value, info.context)

    @model_validator(mode="after")
    def _every_task_has_rows(self) -> TemplatedConfig:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be distinct, got {names}")
        if self.rows is None and any(t.rows is None for t in self.tasks):
            raise ValueError("set rows = {...} on the table, or on every task")
        return self


class TemplatedSource(ift.InstructionSource):
    """Structured rows x instruction templates -> records (see the module docstring)."""

    name = "templated"
    Config = TemplatedConfig
    config: TemplatedConfig

    def records(self) -> Iterator[ift.InstructionRecord]:
        self._fingerprints: list[str] = []
        env = sandboxed_environment(getattr(self.host, "prepare_jinja_env", None))
        for t, (task, source) in enumerate(zip(self.config.tasks, self._rows_sources(), strict=True)):
            rows = list(read_rows(source))
            self._fingerprints.append(source.fingerprint())
            yield from self._task_records(env, task, t, rows)

    def _task_records(self, env: Any, task: TaskTemplate, t: int, rows: list[Row]) -> Iterator[ift.InstructionRecord]:
        phrasings = [(f"tasks[{t}].instructions[{i}]", text) for i, text in enumerate(task.instructions)]
        phrasings += [
            (name, path.read_text(encoding="utf-8"))
            for name, path in zip(task.instruction_files, self._files(task, t), strict=True)
        ]
        compiled = [(origin, self._compile(env, text, origin)) for origin, text in phrasings]
        answer = self._compile(env, task.answer, f"tasks[{t}].answer")
        system = self._compile(env, task.system, f"tasks[{t}].system") if task.system else None
        label = self._compile(env, task.label, f"tasks[{t}].label") if task.label else None
        keys = [self._row_key(row) for row in rows]
        contexts = [self._context(task, row) for row in rows]
        answers = [
            _render(answer, ctx, f"tasks[{t}].answer", task, row) for ctx, row in zip(contexts, rows, strict=True)
        ]
        for i, (row, key, ctx, answer_text) in enumerate(zip(rows, keys, contexts, answers, strict=True)):
            rng = random.Random(f"{self.config.seed}:{task.name}:{key}")
            choice = rng.randrange(len(compiled))
            origin, template = compiled[choice]
            picks = rng.sample(range(len(rows) - 1), min(task.few_shot, len(rows) - 1)) if task.few_shot else []
            shots = [p if p < i else p + 1 for p in picks]  # any row but this one
            ctx = {**ctx, "examples": [{**contexts[j], "answer": answers[j]} for j in shots]}
            messages = [
                ift.Message("user", _render(template, ctx, origin, task, row)),
                ift.Message("assistant", answer_text),
            ]
            if system is not None:
                messages.insert(0, ift.Message("system", _render(system, ctx, f"tasks[{t}].system", task, row)))
            choices = ctx.get("choices") if (task.choices is not None or task.choices_column) else None
            label_text = (
                _render(label, ctx, f"tasks[{t}].label", task, row)
                if label
                else (answer_text if choices is not None else None)
            )
            if choices is not None and label_text not in choices:
                raise row_error(f"task {task.name!r}: label {label_text!r} is not one of the choices {choices}", row)
            yield ift.InstructionRecord(
                id=self._record_id(task, row, key),
                source=self.source_name,
                messages=messages,
                task=task.name,
                label=label_text,
                choices=list(choices) if choices is not None else None,
                metadata={"row": row.index, "phrasing": choice, "template": origin},
            )

    def _files(self, task: TaskTemplate, t: int) -> list[Path]:
        paths = []
        for i, name in enumerate(task.instruction_files):
            path = Path(name).expanduser()
            path = path if path.is_absolute() else self.base_dir / path
            try:
                ift.check_data_file(path, "instruction file")
            except ift.DataError as exc:
                raise ift.RecipeError(
                    [ift.Problem(key_of(self, f"tasks[{t}].instruction_files[{i}]"), str(exc))]
                ) from None
            paths.append(path)
        return paths

    def _compile(self, env: Any, text: str, origin: str) -> Template:
        try:
            with time_budget(RENDER_SECONDS):
                return env.from_string(text)
        except TemplateError as exc:
            raise ift.RecipeError([ift.Problem(key_of(self, origin), str(exc))]) from None
        except (RenderBudgetExceeded, RecursionError, MemoryError) as exc:
            what = "nests too deeply" if isinstance(exc, RecursionError) else f"cannot be compiled: {exc}"
            raise ift.RecipeError([ift.Problem(key_of(self, origin), what)]) from None

    def _record_id(self, task: TaskTemplate, row: Row, key: str) -> str:
        """``task:<row id>``, or ``task[<position>]`` without one: a position, never written like a file line."""
        value = row.values.get(self.config.id_column)
        return f"{task.name}:{key}" if value not in (None, "") else f"{task.name}[{row.index}]"

    def _row_key(self, row: Row) -> str:
        value = row.values.get(self.config.id_column)
        return str(value) if value not in (None, "") else str(row.index)

    def _context(self, task: TaskTemplate, row: Row) -> dict[str, Any]:
        ctx = {**row.values, "task": task.name}
        if task.choices is not None:
            ctx["choices"] = list(task.choices)
        elif task.choices_column is not None:
            value = row.values.get(task.choices_column)
            if isinstance(value, str):
                value = [c.strip() for c in value.split("|") if c.strip()]
            if not isinstance(value, list) or not value:
                raise row_error(
                    f"task {task.name!r}: column {task.choices_column!r} must hold the choices "
                    f"(a list or 'a|b|c'), got {value!r}",
                    row,
                )
            ctx["choices"] = [str(c) for c in value]
        return ctx

    def _rows_sources(self) -> list[ift.InstructionSource]:
        return [
            open_source(
                self, task.rows or self.config.rows or {}, f"tasks[{t}].rows" if task.rows is not None else "rows"
            )
            for t, task in enumerate(self.config.tasks)
        ]

    def _digest(self, parts: list[str]) -> str:
        digest = hashlib.sha256(self.config.model_dump_json().encode())
        for part in parts:
            digest.update(part.encode())
        for t, task in enumerate(self.config.tasks):
            for path in self._files(task, t):
                digest.update(path.read_bytes())
        return "sha256:" + digest.hexdigest()[:16]

    def content_fingerprint(self) -> str | None:
        parts = [source.content_fingerprint() for source in self._rows_sources()]
        return None if None in parts else self._digest([p for p in parts if p is not None])

    def fingerprint(self) -> str:
        parts = getattr(self, "_fingerprints", None)
        return self._digest(parts if parts is not None else [s.fingerprint() for s in self._rows_sources()])


def _render(template: Template, ctx: dict[str, Any], origin: str, task: TaskTemplate, row: Row) -> str:
    try:
        with time_budget(RENDER_SECONDS):
            return template.render(**ctx).strip()
    except (RenderBudgetExceeded, MemoryError) as exc:
        raise row_error(
            f"task {task.name!r}, template {origin}: {exc or 'out of memory'} (budget: "
            f"{RENDER_SECONDS:g} s and {MAX_VALUE_CHARS:,} characters per operation)",
            row,
        ) from None
    except RecursionError:
        raise row_error(f"task {task.name!r}, template {origin}: the template recurses without bound", row) from None
    except TemplateError as exc:
        columns = json.dumps(sorted(ctx))
        raise row_error(f"task {task.name!r}, template {origin}: {exc} (variables: {columns})", row) from None


def row_error(message: str, row: Row) -> ift.DataError:
    """A DataError naming the row: file and line where known, else the row's position."""
    if row.line is None:
        message = f"row {row.index}: {message}"
    return ift.DataError(message, file=row.file, line=row.line)
