"""Write train.jsonl and test.jsonl: customer-service messages of an online shop, each labelled with one of ten
intents. Run ``python make_intents.py``; the output is the same on every run (seeded).

Each intent has hand-written phrasings with slots (an order number, a product, a time); each phrasing is filled
in several ways, wrapped in varied greetings and sign-offs, and sometimes written the way people type in a chat
box (lower case, no final punctuation). A quarter of the phrasings of every intent are used only in the test
file, so the test measures how well a model handles wordings it never saw, not only new slot values.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

PHRASINGS: dict[str, list[str]] = {
    "track_order": [
        "Where is my order {order}?",
        "Can you tell me when my {product} will arrive?",
        "I ordered the {product} {when} and it still hasn't shown up.",
        "What's the status of order {order}?",
        "Has my package shipped yet?",
        "The tracking page for {order} hasn't updated in days, where is it?",
        "How long until my {product} gets here?",
        "Is order {order} out for delivery today?",
        "My parcel was supposed to come {when}. Any news?",
        "Could you give me a tracking number for my {product}?",
        "I'm still waiting on my delivery from {when}, is it lost?",
        "When can I expect order {order} to be delivered?",
    ],
    "cancel_order": [
        "Please cancel my order {order}.",
        "I want to cancel the {product} I just bought.",
        "Can I still cancel order {order} before it ships?",
        "I changed my mind, don't send the {product}.",
        "How do I cancel an order I placed {when}?",
        "Stop order {order}, I ordered it by mistake.",
        "I accidentally ordered the {product} twice, cancel one of them please.",
        "Is it too late to cancel {order}?",
        "I need to call off my purchase of the {product}.",
        "Cancel everything in order {order}, I found it cheaper elsewhere.",
        "Please don't ship order {order}, I no longer need it.",
        "I'd like to withdraw my order for the {product}.",
    ],
    "refund_request": [
        "I want my money back for order {order}.",
        "When will I get the refund for the {product} I returned?",
        "You still haven't refunded me for {order}.",
        "I sent the {product} back {when}, where is my refund?",
        "Can I get a refund instead of a replacement?",
        "How long does a refund take to reach my card?",
        "The refund for order {order} was for the wrong amount.",
        "I was promised a refund {when} and have seen nothing.",
        "Please refund the {product}, it never worked properly.",
        "Can you credit my account for order {order}?",
        "I'd like a full refund on the {product}.",
        "My refund for {order} still shows as pending.",
    ],
    "return_item": [
        "How do I return the {product}?",
        "I'd like to send back order {order}.",
        "Can I return the {product} if I've already opened it?",
        "What's your return policy for the {product}?",
        "I need a return label for order {order}.",
        "The {product} doesn't fit, can I exchange it for another size?",
        "Where do I drop off a return?",
        "Is it too late to return something I bought {when}?",
        "I want to swap the {product} for a different colour.",
        "Can you arrange a pickup to return order {order}?",
        "Do I have to pay for return shipping on the {product}?",
        "I'd like to exchange the {product} I got {when}.",
    ],
    "change_address": [
        "I need to change the delivery address for order {order}.",
        "Can you ship my {product} to my office instead?",
        "I moved {when}, please update my shipping address.",
        "Wrong address on order {order}, can you fix it?",
        "How do I change where my package is delivered?",
        "Please send order {order} to my new apartment.",
        "I typed the wrong postcode for my {product}.",
        "Can I redirect my parcel to a pickup point?",
        "Update my address before you ship the {product}, please.",
        "The street name on order {order} is misspelled.",
        "Could the {product} go to my parents' house instead?",
        "I want to add a flat number to the address on {order}.",
    ],
    "payment_issue": [
        "My card was declined when I tried to pay for the {product}.",
        "I was charged twice for order {order}.",
        "Why did my payment fail?",
        "There's a charge on my statement from {when} that I don't recognise.",
        "Can I pay with PayPal instead of a card?",
        "The checkout keeps giving me a payment error.",
        "You took the money for {order} but the order shows unpaid.",
        "My discount code didn't apply and I paid full price for the {product}.",
        "I got billed the wrong amount for order {order}.",
        "Can I split the payment for the {product} into instalments?",
        "My bank says the payment for {order} was blocked.",
        "I see two pending charges for the {product}.",
    ],
    "account_access": [
        "I can't log in to my account.",
        "I forgot my password, how do I reset it?",
        "The password reset email never arrives.",
        "My account got locked after too many attempts.",
        "How do I change the email address on my account?",
        "I think someone else is using my account.",
        "The verification code isn't working.",
        "I can't sign in since {when}.",
        "Please help me recover my account, I lost access to my old email.",
        "The app keeps logging me out.",
        "How do I delete my account?",
        "I never received the link to activate my account.",
    ],
    "product_availability": [
        "Is the {product} in stock?",
        "When will the {product} be available again?",
        "Do you have the {product} in a larger size?",
        "Can you notify me when the {product} is back?",
        "Is the {product} sold in your stores or only online?",
        "Does the {product} come in black?",
        "Are you going to restock the {product} soon?",
        "How many of the {product} do you have left?",
        "Can I pre-order the new {product}?",
        "The {product} says out of stock, is that right?",
        "Do you still sell the {product} I bought {when}?",
        "Is the {product} available for delivery to my area?",
    ],
    "damaged_item": [
        "My {product} arrived broken.",
        "The box for order {order} was crushed and the item inside is damaged.",
        "The {product} I received {when} has a crack in it.",
        "Part of my {product} is missing.",
        "I got the wrong item in order {order}.",
        "The {product} stopped working after two days.",
        "Order {order} came with a scratched screen.",
        "The {product} smells burnt when I turn it on.",
        "Half of order {order} was missing from the parcel.",
        "The {product} you sent me is defective.",
        "My {product} arrived wet and stained.",
        "The seal on the {product} was already broken when it arrived.",
    ],
    "speak_to_agent": [
        "I want to talk to a real person.",
        "Can I speak to a human, please?",
        "Connect me with customer service.",
        "This bot isn't helping, get me an agent.",
        "Is there a phone number I can call?",
        "I need to speak with a manager about order {order}.",
        "Transfer me to someone who can actually help.",
        "Can a support agent call me back?",
        "I'd rather chat with a person about my {product}.",
        "Put me through to a representative.",
        "How do I reach your support team directly?",
        "I've been going in circles, let me talk to someone.",
    ],
}

PRODUCTS = [
    "pair of running shoes",
    "wireless headset",
    "coffee maker",
    "winter jacket",
    "phone case",
    "yoga mat",
    "desk lamp",
    "backpack",
    "smart watch",
    "blender",
    "office chair",
    "bluetooth speaker",
    "kettle",
    "rain jacket",
    "laptop stand",
    "electric toothbrush",
    "board game",
    "air fryer",
]
WHEN = [
    "last Tuesday",
    "two weeks ago",
    "on Monday",
    "yesterday",
    "over a week ago",
    "at the start of the month",
    "three days ago",
    "last weekend",
    "on the 3rd",
    "ten days ago",
]
OPENINGS = [
    "",
    "",
    "",
    "Hi, ",
    "Hello! ",
    "Hey, ",
    "Good morning. ",
    "Hi there. ",
    "Quick question: ",
    "Sorry to bother you, but ",
    "Hello, ",
    "Excuse me, ",
]
CLOSINGS = [
    "",
    "",
    "",
    " Thanks.",
    " Thank you!",
    " Thanks in advance.",
    " Please help.",
    " Cheers.",
    " Appreciate it.",
    " Thx",
]

TRAIN_PER_INTENT = 32
TEST_PER_INTENT = 10


def order_number(rng: random.Random) -> str:
    return rng.choice(["#", "", "no. ", "#"]) + str(rng.randint(10000, 99999))


def fill(phrasing: str, rng: random.Random) -> str:
    text = phrasing.format(order=order_number(rng), product=rng.choice(PRODUCTS), when=rng.choice(WHEN))
    opening = rng.choice(OPENINGS)
    if opening.endswith(", ") and not (text.startswith("I ") or text.startswith("I'")):
        text = text[0].lower() + text[1:]  # "Hi, where is ..." reads as one sentence
    text = opening + text + rng.choice(CLOSINGS)
    style = rng.random()
    if style < 0.2:  # typed in a chat box
        text = text.lower().rstrip(".!")
    elif style < 0.3:
        text = text.rstrip(".!?")
    return text


def split_rows(
    phrasings: dict[str, list[str]],
    fill: Callable[[str, random.Random], str],
    rng: random.Random,
    *,
    train_per_intent: int,
    test_per_intent: int,
    row: Callable[[str, str, int, str], dict[str, str]],
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Train and test rows from each intent's phrasings: every fourth phrasing only in the test rows, each filled
    in until the intent has its count of distinct texts, ``row(intent, split, i, text)`` making the row. Also used
    by ../support/make_support.py and make_support_zh.py."""
    train: list[dict[str, str]] = []
    test: list[dict[str, str]] = []
    for intent, pool_all in phrasings.items():
        held_out = pool_all[3::4]  # every fourth phrasing appears only in the test file
        seen = [p for p in pool_all if p not in held_out]
        for split, pool, count in (("train", seen, train_per_intent), ("test", held_out, test_per_intent)):
            texts: set[str] = set()
            while len(texts) < count:
                texts.add(fill(pool[len(texts) % len(pool)], rng))
            rows = train if split == "train" else test
            rows.extend(row(intent, split, i, text) for i, text in enumerate(sorted(texts)))
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def build(seed: int = 2026) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    return split_rows(
        PHRASINGS,
        fill,
        random.Random(seed),
        train_per_intent=TRAIN_PER_INTENT,
        test_per_intent=TEST_PER_INTENT,
        row=lambda intent, split, i, text: {"id": f"{intent}-{split}-{i}", "text": text, "label": intent},
    )


def main() -> None:
    folder = Path(__file__).resolve().parent
    train, test = build()
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
