"""Writes examples/data/preference/pairs.jsonl: preference pairs for examples/preference.toml.

Each prompt asks for a word in a given style; the chosen answer follows the instruction, the rejected one
refuses or hedges ("I cannot help with that."). Made up for ift, CC0 (public domain).
Run: python examples/data/make_preference.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "apple river stone cloud green tiger piano lemon candle mirror forest rocket button garden silver "
    "window orange planet bridge castle dragon island jungle ladder meadow needle ocean pencil quartz rabbit "
    "saddle turtle violin walnut yellow zebra anchor basket cactus dolphin engine falcon glacier harbor "
    "igloo jacket kitten lantern magnet nectar"
).split()
REFUSALS = ("I cannot help with that.", "Sorry, I do not know.", "No.", "I would rather not say.")
STYLES = {"Shout": str.upper, "Whisper": str.lower, "Reverse": lambda w: w[::-1], "Title": str.title}


def rows(seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for word in WORDS:
        for style, make in STYLES.items():
            right = make(word)
            wrong = rng.choice(REFUSALS)
            out.append({"prompt": f"{style}: {word}", "chosen": right, "rejected": wrong})
    rng.shuffle(out)
    return out


if __name__ == "__main__":
    path = Path(__file__).parent / "preference" / "pairs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows()))
    print(f"{path}: {len(rows())} pairs")
