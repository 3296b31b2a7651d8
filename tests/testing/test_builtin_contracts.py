"""Every builtin plugin component passes the contract suite of its kind (the same suites plugin authors
run, from ``ift.testing``), and no builtin component is left without one.

One module (over 500 lines) on purpose: the completeness test reads the contract classes defined here."""

from __future__ import annotations

import copy
import hashlib
import sys
from pathlib import Path
from typing import Any

import torch

import ift
from ift.builtin_plugins import metrics as M
from ift.builtin_plugins import peft_builtins as P
from ift.builtin_plugins import renderers as R
from ift.builtin_plugins import sources as S
from ift.builtin_plugins import transforms as T
from ift.builtin_plugins.builders import RetrievedSource, SelfInstructSource, TemplatedSource, TfidfBackend
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.classifier import ClassifierAdapter
from ift.builtin_plugins.cleaning import Decontaminate, LengthFilter, MaskPII, NearDedup, Tag
from ift.builtin_plugins.preference import DPOObjective, KTOObjective, ORPOObjective
from ift.builtin_plugins.seq2seq import Seq2SeqAdapter
from ift.builtin_plugins.sft import NLL, SFTTrainer
from ift.builtin_plugins.trainers.adversarial import AdversarialTrainer, EmbeddingAdversarial
from ift.builtin_plugins.trainers.continual import ContinualTrainer, ElasticWeightConsolidation
from ift.builtin_plugins.trainers.distill import Distillation, DistillTrainer
from ift.components import KINDS
from ift.host import PluginHost
from ift.records import InstructionRecord, Message
from ift.testing import (
    ComponentContract,
    MetricCase,
    MetricContract,
    ModelAdapterContract,
    ObjectiveContract,
    PeftMethodContract,
    RendererContract,
    SimilarityBackendContract,
    SourceContract,
    TrainerContract,
    TransformContract,
    sample_records,
    sample_rows,
    tiny_model_table,
    write_files,
)
from ift.testing.contracts import PreferenceObjectiveContract
from ift.testing.models import component_config

ROWS = sample_rows(6)
CSV = "id,instruction,output\n" + "".join(f"{r['id']},{r['instruction']},{r['output']}\n" for r in ROWS)


def rec(rid: str, user: str, answer: str, **extra: Any) -> InstructionRecord:
    return InstructionRecord(rid, "data", [Message("user", user), Message("assistant", answer)], **extra)


# --- sources ---------------------------------------------------------------------------------------


class TestJsonlSource(SourceContract):
    component = S.JsonlSource
    config = {"path": "data.jsonl"}
    files = {"data.jsonl": ROWS}
    min_records = 6


class TestJsonSource(SourceContract):
    component = S.JsonSource
    config = {"path": "data.json", "field": "rows"}
    files = {
        "data.json": '{"rows": ['
        + ", ".join(f'{{"instruction": "{r["instruction"]}", "output": "{r["output"]}"}}' for r in ROWS)
        + "]}"
    }
    min_records = 6


class TestCsvSource(SourceContract):
    component = S.CsvSource
    config = {"path": "data.csv"}
    files = {"data.csv": CSV}
    min_records = 6


class TestParquetSource(SourceContract):
    component = S.ParquetSource
    config = {"path": "data.parquet"}
    min_records = 6

    def make_source(self, base_dir: Path, host: Any) -> ift.InstructionSource:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not (base_dir / "data.parquet").is_file():
            pq.write_table(pa.Table.from_pylist(ROWS), base_dir / "data.parquet")
        return super().make_source(base_dir, host)


class TestHubSourceFromLocalFolder(SourceContract):
    """``hf`` with a local dataset folder (no network here): what an air-gapped user points it at."""

    component = S.HubSource
    config = {"dataset": "hub-folder"}
    files = {"hub-folder/train.jsonl": ROWS}
    min_records = 6

    def make_source(self, base_dir: Path, host: Any) -> ift.InstructionSource:
        config = S.HubSource.Config(dataset=str(base_dir / "hub-folder"))
        return S.HubSource(config, source_name=self.source_name, base_dir=base_dir, host=host)


class TestTemplatedSource(SourceContract):
    component = TemplatedSource
    config = {
        "rows": {"source": "csv", "path": "rows.csv"},
        "tasks": [
            {
                "name": "shout",
                "answer": "{{ output }}",
                "instructions": ["Uppercase: {{ word }}", "Write {{ word }} in capitals."],
            }
        ],
    }
    files = {
        "rows.csv": "id,word,output\n"
        + "".join(f"w{i},{w},{w.upper()}\n" for i, w in enumerate(["oak", "elm", "ash", "yew"]))
    }
    min_records = 4


class TestRetrievedSource(SourceContract):
    component = RetrievedSource
    config = {"library": {"source": "jsonl", "path": "library.jsonl"}, "query": "uppercase a word", "top_k": 3}
    files = {"library.jsonl": ROWS}
    min_records = 3


def fake_generate(prompts: list[str], *, max_new_tokens: int, stop: list[str]) -> list[str]:
    """A deterministic stand-in for the generating model: new instructions derived from each prompt's hash."""
    nouns = "river cloud engine garden planet violin bridge lantern desert harbor".split()
    verbs = "Describe Explain Summarize Compare List Classify Rewrite Translate".split()
    out = []
    for prompt in prompts:
        if prompt.endswith("Input:"):
            out.append(" none\nOutput: Here it is.")
            continue
        h = hashlib.sha256(prompt.encode()).digest()
        out.append(
            "\n".join(
                f"{verbs[h[3 * k] % 8]} the {nouns[h[3 * k + 1] % 10]} of {nouns[h[3 * k + 2] % 10]}." for k in range(3)
            )
        )
    return out


class TestSelfInstructSource(SourceContract):
    component = SelfInstructSource
    config = {
        "seeds": {"source": "jsonl", "path": "seeds.jsonl"},
        "num_instructions": 4,
        "max_rounds": 3,
        "prompts_per_round": 2,
        "work_dir": "work",
        "model": component_config(tiny_model_table()),
    }
    files = {
        "seeds.jsonl": [
            {"id": f"s{i}", "instruction": text, "output": "ok"}
            for i, text in enumerate(
                [
                    "Write a short poem about the sea.",
                    "Name three primary colors.",
                    "Convert 10 kilometers to miles.",
                    "Give a synonym for happy.",
                ]
            )
        ]
    }
    min_records = 1

    def make_source(self, base_dir: Path, host: Any) -> ift.InstructionSource:
        return SelfInstructSource(
            self.make_config(base_dir),
            source_name=self.source_name,
            base_dir=base_dir,
            host=host,
            generate=fake_generate,
        )


# --- transforms ------------------------------------------------------------------------------------

MIXED = [
    rec("a", "Uppercase: apple", "APPLE"),
    rec("b", "uppercase:  APPLE", "apple"),
    rec("c", "Say hi", "   "),
    rec("d", "Echo this", "echo this"),
    rec("e", "Call me at 555-123-4567 or mail jo@example.com", "Done, jo@example.com noted."),
    InstructionRecord("f", "data", [Message("user", "Only a question")]),
    rec("g", "Summarize this long article about the history of the river trade in the valley", "Trade grew."),
]


class TestDropInvalid(TransformContract):
    component = T.DropInvalid
    records = MIXED
    expected_ids = ["a", "b", "e", "g"]
    expected_dropped = {"empty output": 1, "answer identical to prompt": 1, "missing output": 1}


class TestExactDedup(TransformContract):
    component = T.ExactDedup
    records = [*MIXED, rec("h", "Echo this", "a different answer")]
    expected_ids = ["a", "c", "d", "e", "f", "g", "h"]  # b equals a after case and spacing normalisation
    expected_dropped = {"duplicate": 1}


class TestExactDedupByPrompt(TransformContract):
    component = T.ExactDedup
    config = {"by": "prompt"}
    records = [*MIXED, rec("h", "Echo this", "a different answer")]
    expected_ids = ["a", "c", "d", "e", "f", "g"]
    expected_dropped = {"duplicate": 2}


class TestNearDedup(TransformContract):
    component = NearDedup
    config = {"by": "prompt", "threshold": 0.5, "shingle_size": 1}
    records = [
        rec("a", "write a poem about the sea at night", "x"),
        rec("b", "write a poem about the sea at dawn", "y"),
        rec("c", "list three prime numbers below twenty", "z"),
    ]
    expected_ids = ["a", "c"]
    expected_dropped = {"near-duplicate": 1}


class TestLengthFilter(TransformContract):
    component = LengthFilter
    config = {"min_answer": 1, "max_prompt": 12}
    records = MIXED[:5] + MIXED[6:]
    expected_ids = ["a", "b", "d", "e"]
    expected_dropped = {"answer too short": 1, "prompt too long": 1}


class TestMaskPII(TransformContract):
    component = MaskPII
    records = MIXED
    expected_ids = ["a", "b", "c", "d", "e", "f", "g"]


class TestTag(TransformContract):
    component = Tag
    records = MIXED


class TestDecontaminate(TransformContract):
    component = Decontaminate
    config = {"eval_path": "eval.jsonl", "n": 4}
    files = {
        "eval.jsonl": [
            {"instruction": "Summarize this long article about the history of the river trade", "output": "x"}
        ]
    }
    records = MIXED
    expected_ids = ["a", "b", "c", "d", "e", "f"]
    expected_dropped = {"overlaps eval set": 1}


# --- renderers -------------------------------------------------------------------------------------


class TestAlpacaRenderer(RendererContract):
    component = R.AlpacaRenderer
    expected_text = {"sample-0": "### Instruction:\nUppercase: apple\n\n### Response:\nAPPLE<|endoftext|>\n\n"}


class TestChatMLRenderer(RendererContract):
    component = R.ChatMLRenderer


class TestPlainRenderer(RendererContract):
    component = R.PlainRenderer


class TestJinjaFileRenderer(RendererContract):
    component = R.JinjaFileRenderer
    config = {"path": "qa.jinja"}
    files = {
        "qa.jinja": "{% for m in messages %}{% if m.role == 'assistant' %}A: {% generation %}{{ m.content }}"
        "{{ eos_token }}{% endgeneration %}\n{% else %}{{ m.role[0] | upper }}: {{ m.content }}\n"
        "{% endif %}{% endfor %}"
    }
    expected_text = {"sample-0": "U: Uppercase: apple\nA: APPLE<|endoftext|>\n"}


class TestChatTemplateRenderer(RendererContract):
    component = R.ChatTemplateRenderer
    expected_text = {
        "sample-0": "<|im_start|>user\nUppercase: apple<|im_end|>\n<|im_start|>assistant\nAPPLE<|im_end|>\n"
    }


# --- model adapters and trainers -------------------------------------------------------------------


class TestCausalLMAdapter(ModelAdapterContract):
    component = CausalLMAdapter
    config = component_config(tiny_model_table())


class TestCausalLMAdapterWithLoRA(ModelAdapterContract):
    component = CausalLMAdapter
    config = component_config(tiny_model_table(peft={"method": "lora", "r": 4, "alpha": 8}))


class TestSeq2SeqAdapter(ModelAdapterContract):
    component = Seq2SeqAdapter
    config = {
        "tokenizer": "byte-level",
        "device": "cpu",
        "dtype": "float32",
        "from_config": {"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 16, "num_layers": 1, "num_heads": 2},
    }
    labels_are_input_ids = False


class TestClassifierAdapter(ModelAdapterContract):
    component = ClassifierAdapter
    config = {
        "tokenizer": "byte-level",
        "device": "cpu",
        "dtype": "float32",
        "labels": ["positive", "negative"],
        "from_config": {
            "model_type": "bert",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 256,
        },
    }
    records = [
        rec(f"c{i}", f"Is '{text}' positive or negative?", label, label=label, choices=["positive", "negative"])
        for i, (text, label) in enumerate([("I love it", "positive"), ("Awful", "negative"), ("Great fun", "positive")])
    ]
    labels_are_input_ids = False


class TestSFTTrainer(TrainerContract):
    component = SFTTrainer
    config = {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-2, "log_every": 1, "max_length": 128}


class TestSFTObjective(ObjectiveContract):
    component = NLL
    config = {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-2, "log_every": 1, "max_length": 128}


TRAIN = {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-2, "log_every": 1, "max_length": 128}


class TestAdversarialTrainer(TrainerContract):
    component = AdversarialTrainer
    config = {**TRAIN, "epsilon": 0.5}


class TestAdversarialTrainerPGD(TrainerContract):
    component = AdversarialTrainer
    config = {**TRAIN, "epsilon": 0.5, "attack": "pgd", "pgd_steps": 2}


class TestDistillTrainer(TrainerContract):
    component = DistillTrainer
    config = {**TRAIN, "teacher": "teacher", "alpha": 0.5}

    def prepare(self, folder: Path) -> None:
        teacher = self.make_model(folder)  # same shape and vocabulary as the student, other weights
        with torch.no_grad():
            for p in teacher.model.parameters():
                p.add_(0.05)
        teacher.adapter.save(teacher.model, teacher.tokenizer, folder / "teacher")


class TestContinualTrainer(TrainerContract):
    component = ContinualTrainer
    config = {**TRAIN, "previous_run": "previous", "replay_examples": 2, "ewc_lambda": 10.0, "ewc_examples": 2}

    def prepare(self, folder: Path) -> None:
        old = sample_records(6, source="old-task")
        write_files(
            folder / "previous" / "data",
            {"train.jsonl": [r.to_dict() for r in old[:4]], "eval.jsonl": [r.to_dict() for r in old[4:]]},
        )


class TestEmbeddingAdversarialObjective(ObjectiveContract):
    component = EmbeddingAdversarial
    config = {**TRAIN, "epsilon": 0.5}


class TestElasticWeightConsolidationObjective(ObjectiveContract):
    component = ElasticWeightConsolidation
    config = TestContinualTrainer.config
    prepare = TestContinualTrainer.prepare

    def loss_objective(self, trained: Any) -> Any:
        objective = super().loss_objective(trained)
        model = trained.result.model  # anchored at other weights, so the penalty is not zero
        objective.ewc = [(p, torch.ones_like(p), p.detach() + 0.01) for p in model.parameters() if p.requires_grad]
        return objective


class TestDistillationObjective(ObjectiveContract):
    component = Distillation
    config = TestDistillTrainer.config
    prepare = TestDistillTrainer.prepare

    def loss_objective(self, trained: Any) -> Any:
        objective = super().loss_objective(trained)
        objective.teacher = copy.deepcopy(trained.result.model).requires_grad_(False)  # what setup() loads
        return objective


# --- metrics ---------------------------------------------------------------------------------------

LABELS = [
    rec(f"l{i}", "Sentiment?", gold, label=gold, choices=["pos", "neg"])
    for i, gold in enumerate(["pos", "pos", "neg", "neg"])
]


class TestLossMetric(MetricContract):
    component = M.LossMetric
    cases = [MetricCase([], [], 0.5, loss_sum=3.0, loss_tokens=6), MetricCase([], [], float("nan"))]


class TestPerplexityMetric(MetricContract):
    component = M.PerplexityMetric
    cases = [MetricCase([], [], 2.718281828, loss_sum=2.0, loss_tokens=2)]


class TestExactMatchMetric(MetricContract):
    component = M.ExactMatchMetric
    cases = [
        MetricCase(["Paris.", "rome", "Berlin"], ["paris", "Rome", "Madrid"], 2 / 3),
        MetricCase(["Paris."], ["paris"], 1.0, note="normalized"),
    ]


class TestExactMatchStrict(MetricContract):
    component = M.ExactMatchMetric
    config = {"normalize": False}
    cases = [MetricCase(["Paris.", " Rome "], ["paris", "Rome"], 0.5)]


class TestRougeLMetric(MetricContract):
    component = M.RougeLMetric
    # "the cat sat" vs "the cat sat down": LCS 3, precision 1, recall 3/4 -> F1 6/7
    cases = [MetricCase(["the cat sat", "x"], ["the cat sat down", "y"], (6 / 7 + 0) / 2)]


class TestAccuracyMetric(MetricContract):
    component = M.AccuracyMetric
    cases = [MetricCase(["pos", "neg", "neg", "neg"], ["pos", "pos", "neg", "neg"], 0.75, records=LABELS)]


class TestPrecisionMetric(MetricContract):
    component = M.PrecisionMetric
    # pos: precision 1/1; neg: 2/3 -> macro 5/6
    cases = [MetricCase(["pos", "neg", "neg", "neg"], ["pos", "pos", "neg", "neg"], 5 / 6, records=LABELS)]


class TestRecallMetric(MetricContract):
    component = M.RecallMetric
    # pos: 1/2; neg: 2/2 -> macro 0.75
    cases = [MetricCase(["pos", "neg", "neg", "neg"], ["pos", "pos", "neg", "neg"], 0.75, records=LABELS)]


class TestF1Metric(MetricContract):
    component = M.F1Metric
    # pos: P 1, R 1/2 -> 2/3; neg: P 2/3, R 1 -> 4/5; macro (2/3 + 4/5) / 2 = 11/15
    cases = [MetricCase(["pos", "neg", "neg", "neg"], ["pos", "pos", "neg", "neg"], 11 / 15, records=LABELS)]


# --- similarity backends ---------------------------------------------------------------------------


class TestTfidfBackend(SimilarityBackendContract):
    component = TfidfBackend


# --- PEFT methods -----------------------------------------------------------------------------------


class TestLoraMethod(PeftMethodContract):
    component = P.LoraMethod
    config = {"r": 4, "alpha": 8}


class TestAdaLoraMethod(PeftMethodContract):
    component = P.AdaLoraMethod
    config = {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1}


class TestIA3Method(PeftMethodContract):
    component = P.IA3Method


class TestPrefixTuningMethod(PeftMethodContract):
    component = P.PrefixTuningMethod
    config = {"num_virtual_tokens": 3}


class TestPromptTuningMethod(PeftMethodContract):
    component = P.PromptTuningMethod
    config = {"num_virtual_tokens": 3}


# --- completeness ----------------------------------------------------------------------------------


PREFERENCE = {**TRAIN, "max_steps": 4, "batch_size": 4, "learning_rate": 3e-3}


class TestDPOObjective(PreferenceObjectiveContract):
    component = DPOObjective
    config = {**PREFERENCE, "beta": 0.5}


class TestORPOObjective(PreferenceObjectiveContract):
    component = ORPOObjective
    config = PREFERENCE


class TestKTOObjective(PreferenceObjectiveContract):
    component = KTOObjective
    config = {**PREFERENCE, "beta": 0.5}


def covered_components() -> set[tuple[str, type]]:
    module = sys.modules[__name__]
    return {
        (value.kind, value.component)
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ComponentContract)
        and value.__name__.startswith("Test")
        and getattr(value, "component", None) is not None
    }


def test_every_builtin_component_has_a_contract_test() -> None:
    host = PluginHost(entry_points=False)
    covered = covered_components()
    # an objective's contract trains through the trainer it becomes, which each host builds afresh
    through_objective = {cls for kind, cls in covered if kind == "objective"}
    missing = [
        f"{kind} {name!r} ({reg.cls.__module__}.{reg.cls.__qualname__})"
        for kind in KINDS
        for name, reg in sorted(host.registry[kind].items())
        if reg.distribution == "ift"
        and (kind, reg.cls) not in covered
        and getattr(reg.cls, "objective_class", None) not in through_objective
    ]
    assert not missing, "builtin components without a contract test in this file: " + "; ".join(missing)


def test_the_suite_covers_every_kind() -> None:
    assert {kind for kind, _ in covered_components()} == set(KINDS)
