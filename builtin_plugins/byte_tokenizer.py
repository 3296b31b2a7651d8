"""A byte-level tokenizer that needs no download: 256 byte tokens plus a few special tokens.

Used when a recipe sets ``tokenizer = "byte-level"`` (the quickstart and the tests). It is a standard
``tokenizers`` BPE model with no merges, so it saves as ``tokenizer.json`` and loads back with plain
``AutoTokenizer.from_pretrained``. It carries a ChatML chat template so ``[template] name = "chat"``
works with it too.
"""

from __future__ import annotations

from typing import Any

PAD, EOS, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_byte_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([PAD, EOS, IM_START, IM_END])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, pad_token=PAD, additional_special_tokens=[IM_START, IM_END]
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
