"""Generate examples/data/quickstart.jsonl: simple string tasks a tiny model can learn in minutes on a CPU.

Every input is a random lower-case string (seeded), so held-out inputs are new strings the model has
never seen: a high exact-match score means it learned the task, not the answers.

    python examples/data/make_quickstart.py
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

TASKS = {
    "uppercase": ("Uppercase: {w}", lambda w: w.upper()),
    "reverse": ("Reverse: {w}", lambda w: w[::-1]),
    "first-letter": ("First letter of: {w}", lambda w: w[0]),
    "last-letter": ("Last letter of: {w}", lambda w: w[-1]),
    "repeat": ("Repeat twice: {w}", lambda w: f"{w} {w}"),
}


def main(n_per_task: int = 4000, seed: int = 1234) -> None:
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    rows = []
    for task, (prompt, answer) in TASKS.items():
        while sum(1 for r in rows if r["task"] == task) < n_per_task:
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
            if (task, word) in seen:
                continue
            seen.add((task, word))
            rows.append(
                {
                    "id": f"{task}-{word}",
                    "task": task,
                    "instruction": prompt.format(w=word),
                    "input": "",
                    "output": answer(word),
                }
            )
    rng.shuffle(rows)
    out = Path(__file__).with_name("quickstart.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
