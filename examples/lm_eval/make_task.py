"""Write a run's eval set (RUN/data/eval.jsonl) as an lm-eval task, so that

    python examples/lm_eval/make_task.py RUN OUT
    lm_eval --model hf --model_args pretrained=RUN/model --apply_chat_template \
            --include_path OUT --tasks ift_eval --batch_size 8

scores the run's model on the records ift evaluated, prompted through the chat template the run saved (it
renders exactly the run's own prompts; docs/inference.md). Each document holds the user turn before the answer
(records with a system prompt or several turns are left out and counted: lm-eval builds its chat prompt from one
user turn) and the answer (``target``); generation stops at the ids of the run's generation_config.json, and
``exact_match`` compares stripped text, as ift's ``exact_match`` does by default. Needs no network: the data is a
local JSON file. For a LoRA run: ``--model_args pretrained=BASE,peft=RUN/model``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASK = """task: ift_eval
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: {until}
  do_sample: false
  max_gen_toks: {max_tokens}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    regexes_to_ignore: ['^\\s+', '\\s+$']
metadata:
  version: 1.0
"""


def main(run: Path, out: Path, max_tokens: int = 64) -> Path:
    """Write ``out/ift_eval.jsonl`` and ``out/ift_eval.yaml`` from ``run``; returns the yaml's path."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(run / "model"))
    eos = GenerationConfig.from_pretrained(str(run / "model")).eos_token_id
    stops = [tokenizer.convert_ids_to_tokens(i) for i in ([eos] if isinstance(eos, int) else eos or [])]
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], 0
    for line in (run / "data" / "eval.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        messages = json.loads(line)["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if [m["role"] for m in messages[:last]] != ["user"]:
            skipped += 1
            continue
        rows.append({"prompt": messages[0]["content"], "target": messages[last]["content"]})
    if skipped:
        print(
            f"{skipped} record(s) with a system prompt or several turns left out: lm-eval's chat prompt is a "
            "single user turn, so the score covers the others only",
            file=sys.stderr,
        )
    data = out / "ift_eval.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    task = out / "ift_eval.yaml"
    task.write_text(
        TASK.format(data=json.dumps(str(data.resolve())), until=json.dumps(stops), max_tokens=max_tokens),
        encoding="utf-8",
    )
    return task


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), Path(sys.argv[2])))
