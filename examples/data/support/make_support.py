"""Write train.jsonl and test.jsonl for examples/smollm2-support.toml: customer-service messages of an online
shop, each answered with the name of the team that handles it (one of ten intents). Run
``python make_support.py``; the output is the same on every run (seeded).

The messages come from the hand-written phrasings of ../intents/make_intents.py (the classifier example's data):
each phrasing is filled with an order number, a product and a time, wrapped in greetings and sign-offs, and
sometimes typed the way people write in a chat box. A quarter of each intent's phrasings are used only in the
test file, so the held-out score measures wordings the model never saw in training, not only new slot values.
Rows are in the alpaca format: the message is the instruction and the intent is the output.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# More wordings per intent than the classifier example has, written for this file, so that training sees
# enough ways of saying each thing to carry over to the held-out ones.
EXTRA_PHRASINGS: dict[str, list[str]] = {
    "track_order": [
        "Any update on the delivery of {order}?",
        "My {product} was marked as shipped {when} but nothing since.",
        "Which courier is bringing order {order}?",
        "Is my {product} still on its way?",
        "The estimated delivery date for {order} has passed.",
        "Where exactly is my parcel right now?",
    ],
    "cancel_order": [
        "Cancel order {order} please, I don't want it anymore.",
        "I no longer want the {product}, please don't process the order.",
        "Can you stop my order from {when} before it leaves the warehouse?",
        "I'd like to cancel part of order {order}.",
        "Please void my purchase of the {product}.",
        "I placed order {order} by accident, can it be cancelled?",
    ],
    "refund_request": [
        "I'm still waiting for my money for order {order}.",
        "Please return the payment for the {product} to my card.",
        "The refund you promised for {order} never came through.",
        "Can I have my money back on the {product}?",
        "How much of order {order} will be refunded?",
        "Reimburse me for the {product} please, I sent it back {when}.",
    ],
    "return_item": [
        "Can I send the {product} back for a different model?",
        "What do I need to do to return order {order}?",
        "I'd like to return the {product}, it's not what I expected.",
        "How many days do I have to send back the {product}?",
        "Please email me a prepaid label so I can return {order}.",
        "Can I bring the {product} back to a store?",
    ],
    "change_address": [
        "Please deliver order {order} to a different address.",
        "I gave the wrong house number for the {product}.",
        "Can I still change the shipping address on {order}?",
        "Send the {product} to my work address instead, please.",
        "My address has changed since {when}, update order {order}.",
        "I need the parcel to go to my neighbour's address.",
    ],
    "payment_issue": [
        "My payment for order {order} didn't go through.",
        "I was charged for the {product} but never ordered it.",
        "Why was my card charged twice {when}?",
        "The site won't accept my credit card.",
        "I paid for {order} but you say the payment is missing.",
        "Can I change the card I used to pay for the {product}?",
    ],
    "account_access": [
        "I can't remember the password to my account.",
        "My login stopped working {when}.",
        "Help, I'm locked out of my account.",
        "The two-factor code never reaches my phone.",
        "How do I reset my password if I no longer have that email?",
        "It says my account doesn't exist, but I've ordered before.",
    ],
    "product_availability": [
        "Will you have the {product} back in stock soon?",
        "Is the {product} available in blue?",
        "Can I still buy the {product}, or is it discontinued?",
        "Do you have any {product} left in a small size?",
        "When is the next delivery of the {product} to your warehouse?",
        "Is the {product} available in my local shop?",
    ],
    "damaged_item": [
        "The {product} from order {order} arrived in pieces.",
        "My {product} doesn't turn on out of the box.",
        "Order {order} had a broken {product} inside.",
        "The {product} was dented when it arrived {when}.",
        "Some parts of the {product} are cracked.",
        "You sent me a faulty {product}.",
    ],
    "speak_to_agent": [
        "Let me speak to a human agent, please.",
        "Can someone from your team phone me about order {order}?",
        "I want to talk to a supervisor.",
        "Please get a real person to look at my case.",
        "Is there a live agent I can chat with?",
        "I need a human to help me with the {product}.",
    ],
}
TRAIN_PER_INTENT = 48
TEST_PER_INTENT = 12


def _intents_module():
    spec = importlib.util.spec_from_file_location("make_intents", HERE.parent / "intents" / "make_intents.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(seed: int = 2027) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    intents = _intents_module()
    phrasings = {intent: base + EXTRA_PHRASINGS[intent] for intent, base in intents.PHRASINGS.items()}
    return intents.split_rows(
        phrasings,
        intents.fill,
        random.Random(seed),
        train_per_intent=TRAIN_PER_INTENT,
        test_per_intent=TEST_PER_INTENT,
        row=lambda intent, split, i, text: {
            "id": f"{intent}-{split}-{i}",
            "task": intent,
            "instruction": text,
            "input": "",
            "output": intent,
        },
    )


def main() -> None:
    folder = Path(__file__).resolve().parent
    train, test = build()
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
