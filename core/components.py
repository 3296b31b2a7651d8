"""Base classes of the plugin kinds. Plugins subclass one, set ``name`` and ``Config``, and return the
class from the matching registration hook.

Nothing here imports torch: recipes are validated against these classes before any model code loads.

The kinds stay in one module (over 500 lines) on purpose: it is the page a plugin author reads, one section per
kind, and the kinds share the origin and error-naming machinery at the top.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import weakref
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ift.config import ComponentConfig, TrainerConfig
from ift.records import InstructionRecord

if TYPE_CHECKING:
    from ift.training import TrainContext, TrainResult


@dataclass(frozen=True)
class Origin:
    """Where a component of a run comes from: its plugin (name, distribution, version), its kind and name, and
    the recipe table that configured it (``data[0]``, ``transforms[1]``, ``template``, ``model``...)."""

    plugin: str
    distribution: str
    version: str
    kind: str
    name: str
    table: str


_origins: dict[int, tuple[Any, Origin]] = {}  # id(config) -> (a weak reference to it, its origin)


def set_origin(config: ComponentConfig, origin: Origin) -> None:
    """Record where ``config`` comes from (the recipe does, for every table it validates). Kept beside the config,
    not in it: configs compare and dump as before."""
    key = id(config)
    _origins[key] = (weakref.ref(config, lambda _: _origins.pop(key, None)), origin)


def origin_of(config: ComponentConfig) -> Origin | None:
    entry = _origins.get(id(config))
    return entry[1] if entry is not None and entry[0]() is config else None


def _named_failures(method: Callable[..., Any], origin: Origin, method_name: str) -> Callable[..., Any]:
    """``method``, raising an exception from the plugin's own code as a PluginError that names ``origin`` (the
    original chained). IftErrors (raised on purpose) pass as they are; so does an error already named by an inner
    guarded call. Iterators returned (a source's ``records``) are guarded while they are consumed."""
    from ift.errors import IftError, PluginError

    def named(exc: Exception) -> PluginError:
        return PluginError(
            f"{origin.kind} {origin.name!r} (recipe table {origin.table}) {method_name}() raised "
            f"{type(exc).__name__}: {exc}",
            plugin=origin.plugin,
            distribution=origin.distribution,
            version=origin.version,
        )

    def iterate(iterator: Any) -> Any:
        try:
            yield from iterator
        except IftError:
            raise
        except Exception as exc:
            raise named(exc) from exc

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            result = method(*args, **kwargs)
        except IftError:
            raise
        except Exception as exc:
            raise named(exc) from exc
        return iterate(result) if inspect.isgenerator(result) else result

    return call


class Component:
    """What every plugin component has: a registered ``name`` and a ``Config`` model.

    A component built from a config the recipe validated (which carries an :class:`Origin`) has the methods of
    its kind listed in ``GUARDED`` wrapped on the instance: an exception from the plugin's code in them becomes a
    :class:`~ift.errors.PluginError` naming the plugin, its distribution and version, the component and the recipe
    table. One place for every kind and call site; components built directly (in a plugin's own tests) raise as
    written."""

    name: ClassVar[str]
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig

    def __init__(self, config: ComponentConfig) -> None:
        self.config = config
        origin = origin_of(config)
        if origin is not None:
            for base, methods in GUARDED.items():
                if isinstance(self, base):
                    for method_name in methods:
                        method = getattr(self, method_name, None)
                        if callable(method):
                            setattr(self, method_name, _named_failures(method, origin, method_name))


# --- sources -----------------------------------------------------------------------------------


class InstructionSource(Component, ABC):
    """Yields canonical records. ``source_name`` is the recipe's name for this table, ``base_dir`` the
    folder relative paths in the recipe are resolved against. ``host`` (set by the core) lets a source
    read other sources through :meth:`open_nested`."""

    def __init__(self, config: ComponentConfig, *, source_name: str, base_dir: Path, host: Any = None) -> None:
        super().__init__(config)
        self.source_name = source_name
        self.base_dir = base_dir
        self.host = host

    def open_nested(self, table: dict[str, Any], key: str) -> InstructionSource:
        """Instantiate the source a nested table names (``{source = "csv", path = "rows.csv"}``), validating
        its keys with that source's Config; errors name ``key`` (e.g. ``data[0].rows.path``)."""
        from pydantic import ValidationError

        from ift.errors import Problem, RecipeError

        if self.host is None:
            raise RuntimeError("open_nested needs the plugin host; construct the source with host=...")
        name = table.get("source")
        if not isinstance(name, str) or name not in self.host.registry["source"]:
            raise RecipeError([self.host.unknown_problem(f"{key}.source", "source", str(name))])
        cls = self.host.registry["source"][name].cls
        try:
            config = cls.Config.model_validate({k: v for k, v in table.items() if k != "source"})
        except ValidationError as exc:
            raise RecipeError(
                [Problem(f"{key}.{'.'.join(map(str, e['loc']))}", e["msg"]) for e in exc.errors()]
            ) from None
        return cls(config, source_name=self.source_name, base_dir=self.base_dir, host=self.host)

    @abstractmethod
    def records(self) -> Iterable[InstructionRecord]:
        """Every record of this source, each with a stable ``id`` and ``source == self.source_name``."""

    def content_fingerprint(self) -> str | None:
        """A fingerprint of the data known *before* reading it (a file's hash, a pinned revision), or None.
        Sources returning None make the prepared-data cache step aside, since it could not tell a change."""
        return None

    def fingerprint(self) -> str:
        """A string that changes whenever the data changes (file hash, dataset revision...)."""
        return hashlib.sha256(self.config.model_dump_json().encode()).hexdigest()[:16]


# --- transforms --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a transform did, by reason. The core checks that every dropped record was counted."""

    dropped: Counter[str] = field(default_factory=Counter)
    changed: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def change(self, reason: str, n: int = 1) -> None:
        self.changed[reason] += n


class Transform(Component, ABC):
    """Cleans, filters or rewrites a whole list of records at once (never one hook call per record).
    ``base_dir`` is the recipe's folder, for relative paths in the config."""

    def __init__(self, config: ComponentConfig, *, base_dir: Path | None = None) -> None:
        super().__init__(config)
        self.base_dir = base_dir

    @abstractmethod
    def apply(self, records: list[InstructionRecord], tally: Tally) -> list[InstructionRecord]:
        """Return the kept records; call ``tally.drop(reason)`` for each dropped one."""


class RecordFilter(Transform):
    """A transform that keeps or drops each record on its own: implement :meth:`reason`."""

    @abstractmethod
    def reason(self, record: InstructionRecord) -> str | None:
        """Why ``record`` is dropped, or None to keep it."""

    def apply(self, records: list[InstructionRecord], tally: Tally) -> list[InstructionRecord]:
        kept = []
        for record in records:
            reason = self.reason(record)
            if reason is None:
                kept.append(record)
            else:
                tally.drop(reason)
        return kept


# --- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text and whether the model is trained to produce it."""

    text: str
    trainable: bool


class Renderer(Component, ABC):
    """Turns a record into segments. ``bind`` gives it the tokenizer before the first render, for
    renderers that use the model's own chat template. ``prepare_jinja_env`` applies the plugins'
    ``ift_prepare_jinja_env`` hooks to a Jinja environment (see :mod:`ift.templating`)."""

    def __init__(
        self, config: ComponentConfig, *, base_dir: Path, prepare_jinja_env: Callable[[Any], None] | None = None
    ) -> None:
        super().__init__(config)
        self.base_dir = base_dir
        self.prepare_jinja_env = prepare_jinja_env

    def bind(self, tokenizer: Any) -> None:  # noqa: B027 - optional hook, empty by default
        """Receive the tokenizer. Most text templates ignore it."""

    def notices(self) -> list[str]:
        """What a user should know about how records were rendered so far (a template with no end-of-turn text
        after the answer, a generation prompt that differs from the rendered turn), each once; ``preview`` and
        ``run`` print them."""
        return []

    @abstractmethod
    def render(self, record: InstructionRecord) -> list[Segment]:
        """Segments whose texts concatenate to the full training text."""

    def prompt(self, record: InstructionRecord) -> str:
        """Text given to the model to generate the final answer: everything before the last trainable
        segment."""
        segments = self.render(record)
        last = max((i for i, s in enumerate(segments) if s.trainable), default=len(segments))
        return "".join(s.text for s in segments[:last])

    def render_completions(self, record: InstructionRecord) -> list[list[Segment]]:
        """A preference record rendered once per completion (chosen then rejected; the one completion of an
        unpaired record), each as the prompt followed by that completion as the last assistant turn, with this
        renderer's template. Only the completion (with its end-of-turn text) is trainable: earlier assistant
        turns are prompt. Both renderings must write the prompt identically (a data error otherwise), so the two
        sequences differ only where their completions do."""
        from ift.errors import DataError
        from ift.records import Message
        from ift.templating import merge_segments

        rendered = []
        for answer in record.completions:
            segments = self.render(record.with_answer(Message("assistant", answer.content)))
            last = max((i for i, s in enumerate(segments) if s.trainable), default=None)
            if last is None:
                raise DataError(f"record {record.id!r}: the template renders no trainable text for a completion")
            first = last
            while first > 0 and segments[first - 1].trainable:
                first -= 1
            rendered.append(
                merge_segments([Segment(s.text, s.trainable and i >= first) for i, s in enumerate(segments)])
            )
        prompts = {
            "".join(s.text for s in segs[: next(i for i, s in enumerate(segs) if s.trainable)]) for segs in rendered
        }
        if len(prompts) > 1:
            raise DataError(
                f"record {record.id!r}: the template renders the prompt differently for the chosen and "
                "the rejected completion, so the pair would not share its prompt"
            )
        return rendered

    @abstractmethod
    def template_hash(self) -> str:
        """Hash of the template text, recorded in the manifest."""


# --- model adapters ----------------------------------------------------------------------------


@dataclass
class EncodedExample:
    """Token ids of one example and labels (-100 where no loss is taken).

    ``task`` is the record's task (None when it has none). Adapters need not set it: the core copies it from the
    record after :meth:`ModelAdapter.encode_record` and the length policy, so that trainers can group figures
    (the ``sft`` per-task training loss) by task as well as by source."""

    input_ids: list[int]
    labels: list[int]
    source: str
    record_id: str
    truncated: bool = False
    task: str | None = None
    #: Tokens that begin before a trainable span and reach into it (left untrained; counted in the manifest).
    straddling: int = 0
    #: A preference pair's rejected sequence (the same prompt, the rejected completion); ``input_ids`` and
    #: ``labels`` are then the chosen one's. None for other examples.
    rejected_ids: list[int] | None = None
    rejected_labels: list[int] | None = None
    #: An unpaired preference example's judgement (KTO): whether its completion is desirable.
    desirable: bool | None = None

    @property
    def trainable_tokens(self) -> int:
        return len(self.labels) - self.labels.count(-100)

    @property
    def kind(self) -> str:
        """``"pair"``, ``"desirable"``, ``"undesirable"`` or ``"sequence"`` (an ordinary example)."""
        if self.rejected_ids is not None:
            return "pair"
        if self.desirable is not None:
            return "desirable" if self.desirable else "undesirable"
        return "sequence"

    @property
    def rejected_trainable_tokens(self) -> int:
        labels = self.rejected_labels or []
        return len(labels) - labels.count(-100)

    def rejected_example(self) -> EncodedExample:
        """A pair's rejected sequence as an example of its own (same source, record id and task)."""
        if self.rejected_ids is None or self.rejected_labels is None:
            raise ValueError(f"example {self.record_id!r} is not a preference pair")
        return EncodedExample(
            list(self.rejected_ids),
            list(self.rejected_labels),
            self.source,
            self.record_id,
            truncated=self.truncated,
            task=self.task,
        )


class ModelAdapter(Component, ABC):
    """Loads a model family, tokenizes segments into ids and labels, generates, and saves."""

    def __init__(self, config: ComponentConfig, *, base_dir: Path) -> None:
        super().__init__(config)
        self.base_dir = base_dir

    @abstractmethod
    def load_tokenizer(self) -> Any:
        """The tokenizer, without loading model weights."""

    @abstractmethod
    def load_model(self, tokenizer: Any) -> Any:
        """The model, with PEFT applied when the config asks for it."""

    @abstractmethod
    def encode(self, tokenizer: Any, segments: Sequence[Segment], *, source: str, record_id: str) -> EncodedExample:
        """Ids and labels (-100 = no loss) for one rendered example, before any length policy."""

    def encode_record(self, tokenizer: Any, record: InstructionRecord, segments: Sequence[Segment]) -> EncodedExample:
        """Encode one rendered record. The core calls this; the default passes the segments to
        :meth:`encode`. Adapters that need more of the record than its text (a classifier's ``label``)
        override it."""
        return self.encode(tokenizer, segments, source=record.source, record_id=record.id)

    def encode_many(
        self, tokenizer: Any, items: Sequence[tuple[InstructionRecord, Sequence[Segment]]]
    ) -> list[EncodedExample]:
        """Encode many rendered records at once (the core passes a few hundred at a time), so an adapter can
        tokenize them in one batched call. The result must equal calling :meth:`encode_record` on each, which is
        what this default does."""
        return [self.encode_record(tokenizer, record, segments) for record, segments in items]

    def prepare_data(
        self, train_records: Sequence[InstructionRecord], *, max_length: int | None = None
    ) -> dict[str, Any] | None:
        """Called once with the training split before any record is encoded, for what an adapter learns from
        the data itself (a classifier's label set) and the run's length policy (``trainer.max_length``). Return it
        as plain JSON: it is stored with the prepared data (and shown in the manifest), and given back through
        :meth:`restore_data` when a later run reuses that data from the cache, since nothing is encoded then."""
        return None

    def restore_data(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook, empty by default
        """Take back what :meth:`prepare_data` returned, for prepared data reused from the cache."""

    def fit(
        self, example: EncodedExample, *, max_length: int, overlong: Literal["truncate", "drop"]
    ) -> tuple[EncodedExample | None, str | None]:
        """Apply the length policy. Returns the example (or None) and the reason it was dropped or
        changed ("too long", "truncated", "no trainable tokens after truncation")."""
        if len(example.input_ids) <= max_length:
            return example, None
        if overlong == "drop":
            return None, "longer than max_length"
        cut = EncodedExample(
            example.input_ids[:max_length],
            example.labels[:max_length],
            example.source,
            example.record_id,
            truncated=True,
            task=example.task,
            straddling=example.straddling,
        )
        if cut.trainable_tokens == 0:
            return None, "no trainable tokens left after truncation"
        return cut, "truncated to max_length"

    @abstractmethod
    def collate(self, tokenizer: Any, examples: Sequence[EncodedExample]) -> dict[str, Any]:
        """A training batch of tensors from encoded examples. Besides the model's inputs and ``labels`` it
        holds ``loss_tokens`` (how many positions contribute to the loss, a 0-d tensor), ``real_tokens``
        (non-padding tokens), ``num_examples`` and ``record_ids`` (a list, in example order)."""

    #: Whether this adapter encodes preference records (:attr:`EncodedExample.rejected_ids`, ``desirable``): each
    #: completion is encoded through :meth:`encode_many` like an ordinary sequence and the core joins them.
    supports_preference: ClassVar[bool] = False

    #: Whether :meth:`collate_packed` is implemented (padding-free batches and packing).
    supports_packing: ClassVar[bool] = False

    def collate_packed(self, tokenizer: Any, rows: Sequence[Sequence[EncodedExample]]) -> dict[str, Any]:
        """A batch whose rows each concatenate several examples, with per-example positions so attention
        never crosses examples. Only for adapters with ``supports_packing``."""
        raise NotImplementedError(f"{type(self).__name__} does not support packed batches")

    #: Whether :meth:`enable_gradient_checkpointing` is implemented (``[trainer] gradient_checkpointing``).
    supports_gradient_checkpointing: ClassVar[bool] = False

    def enable_gradient_checkpointing(self, model: Any) -> None:
        """Make ``model`` recompute its layers' activations in backward (trainers call this before training when
        ``gradient_checkpointing = true``). Only for adapters with ``supports_gradient_checkpointing``."""
        raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")

    @abstractmethod
    def loss_sum(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Summed cross-entropy over trainable tokens of a batch, and how many tokens that is."""

    def loss_by_example(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any] | None:
        """Summed loss and loss-token count of each example (two 1-d tensors in ``record_ids`` order), from
        one forward pass; their sums equal :meth:`loss_sum`. None when the adapter cannot split its loss by
        example (per-source training loss is then not reported)."""
        return None

    def training_penalty(self, model: Any) -> Any | None:
        """A term the model's training method adds to the mean loss of every step (AdaLoRA's orthogonality
        penalty), as a 0-d tensor carrying the graph; None when there is none. The training loop adds it, so no
        objective can drop it; :meth:`loss_sum` and :meth:`loss_by_example` leave it out."""
        return None

    def on_optimizer_step(self, model: Any, step: int, total_steps: int) -> None:  # noqa: B027 - optional
        """Called by trainers after each optimizer update, before gradients are cleared (AdaLoRA's rank
        allocation needs them). ``step`` counts from 1."""

    @abstractmethod
    def generate(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        batch_size: int,
        stop: Sequence[str] = (),
    ) -> list[str]:
        """Greedy completions for prompts: the answer text only, cut at the first stop string."""

    @abstractmethod
    def save(self, model: Any, tokenizer: Any, path: Path) -> None:
        """Write a folder loadable with plain transformers / peft ``from_pretrained``."""

    def finish_saved_folder(
        self,
        path: Path,
        *,
        final_path: Path,
        tokenizer: Any,
        renderer: Renderer,
        records: Sequence[InstructionRecord],
        max_length: int,
    ) -> dict[str, Any]:
        """Called after :meth:`save` wrote ``path`` (renamed to ``final_path`` once complete), so that other
        tools use the folder exactly as the run trained: the prompt format (``renderer``, checked on ``records``),
        where generation stops, the trained context ``max_length``. Returns facts for the manifest."""
        return {}

    def load_trained(self, path: Path) -> tuple[Any, Any]:
        """Model and tokenizer from a folder written by :meth:`save` (``ift generate``, ``chat``,
        ``export``), ready for :meth:`generate`."""
        raise NotImplementedError(f"{type(self).__name__} cannot load a saved model")

    def describe(self) -> dict[str, Any]:
        """Facts about the model for the manifest (parameter counts, origin)."""
        return {}


# --- trainers ----------------------------------------------------------------------------------


class Trainer(Component, ABC):
    """A training algorithm. Its Config must subclass :class:`~ift.config.TrainerConfig`."""

    Config: ClassVar[type[ComponentConfig]] = TrainerConfig

    @abstractmethod
    def train(self, ctx: TrainContext) -> TrainResult:
        """Train ``ctx.model`` on ``ctx.train_examples``; report steps through ``ctx.log_step``."""


# --- metrics -----------------------------------------------------------------------------------


@dataclass
class EvalOutputs:
    """What metrics see for one group of eval examples (all of them, or one source's)."""

    predictions: list[str]
    references: list[str]
    records: list[InstructionRecord]
    loss_sum: float = 0.0
    loss_tokens: int = 0


class Metric(Component, ABC):
    """A number computed from eval outputs. ``needs`` says whether generation must run for it."""

    needs: ClassVar[Literal["generation", "loss"]] = "generation"
    higher_is_better: ClassVar[bool] = True

    @abstractmethod
    def compute(self, outputs: EvalOutputs) -> float:
        """The metric over one group of examples."""

    def details(self, outputs: EvalOutputs) -> dict[str, Any] | None:
        """Optional breakdown kept beside the number in ``metrics.json`` (a per-label report, say). A breakdown
        equal to one an earlier metric of the run gave is stored once: this metric's entry is then
        ``{"same_as": "<that metric>"}``."""
        return None


# --- similarity backends ----------------------------------------------------------------------


class SimilarityBackend(Component, ABC):
    """Scores queries against a collection of texts (1.0: same meaning, 0.0: nothing in common); used by
    retrieval-based sources. Plugins bring embeddings this way."""

    @abstractmethod
    def fit(self, texts: Sequence[str]) -> None:
        """Index the collection (called once, before :meth:`scores`)."""

    @abstractmethod
    def scores(self, queries: Sequence[str]) -> Any:
        """A ``len(queries) x len(texts)`` matrix (nested lists or an array) of similarities in [0, 1]."""


#: The methods of each kind whose failures name the plugin (see :class:`Component`). Trainers are not wrapped: a
#: failure deep in training (out of memory, a library's error) keeps its own type and traceback.
GUARDED: dict[type[Component], tuple[str, ...]] = {
    InstructionSource: ("records", "content_fingerprint", "fingerprint"),
    Transform: ("apply", "reason"),
    Renderer: ("bind", "render", "render_completions", "prompt", "template_hash"),
    ModelAdapter: (
        "load_tokenizer",
        "load_model",
        "encode",
        "encode_record",
        "prepare_data",
        "restore_data",
        "fit",
        "collate",
        "collate_packed",
        "loss_sum",
        "loss_by_example",
        "training_penalty",
        "on_optimizer_step",
        "generate",
        "save",
        "load_trained",
        "describe",
    ),
    Metric: ("compute", "details"),
    SimilarityBackend: ("fit", "scores"),
}

from ift.objectives import Objective  # noqa: E402 - it subclasses Component, defined above
from ift.peft import PeftMethod  # noqa: E402 - it subclasses Component, defined above

KINDS: dict[str, type[Component]] = {
    "source": InstructionSource,
    "transform": Transform,
    "renderer": Renderer,
    "model_adapter": ModelAdapter,
    "trainer": Trainer,
    "objective": Objective,
    "metric": Metric,
    "similarity_backend": SimilarityBackend,
    "peft_method": PeftMethod,
}
