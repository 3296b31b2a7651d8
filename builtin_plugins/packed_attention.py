"""Attention over packed rows one example at a time.

A packed or padding-free row holds several examples, told apart by ``position_ids`` that restart at 0
(:mod:`ift.batching`). With transformers' ``sdpa`` attention such a row is attended as one sequence under a
block-diagonal causal mask: the work grows with the square of the row's length, and the masked call cannot use
torch's fused causal kernel. On a CPU, where torch has no variable-length attention kernel, that is most of the
cost of a padding-free batch. The ``ift_sdpa`` implementation registered here attends each example of a packed
row on its own (``scaled_dot_product_attention`` with ``is_causal``), which is the same attention: a token sees
exactly the earlier tokens of its own example. The work becomes the sum of the squares of the examples' lengths.

A call is split only when the mask transformers built for it is exactly the block-diagonal causal mask of the
examples that the positions describe (each position 0, where an example starts, or one more than the one before
it); that is checked once per forward pass (every layer gets the same mask). Everything else goes to
transformers' ``sdpa`` function unchanged: rows that are not packed (no mask at all: plain causal attention),
padding, a cache, a sliding window or chunked attention that cuts into an example (the mask shows it), a key
longer than the query, and layers whose attention is more than a mask (a position bias, soft-capping, attention
sinks, a non-causal module).

:func:`use_for` switches a loaded model whose attention resolved to ``sdpa`` to ``ift_sdpa``. The setting is
not saved: transformers does not write the attention implementation into ``config.json``.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["NAME", "attention", "register", "spans", "use_for"]

NAME = "ift_sdpa"

#: Keyword arguments that make a layer's attention more than its mask.
_SPECIAL = ("position_bias", "softcap", "s_aux", "sinks")

Spans = list[list[tuple[int, int]]]

#: The last (positions, mask) pair looked at and what was found: every layer of a forward pass (and its
#: recomputation under activation checkpointing) gets the same two tensors.
_last: tuple[Any, Any, Spans | None] | None = None

_registered = False


def spans(position_ids: Any) -> Spans | None:
    """``(start, end)`` of each example in each row of a ``[batch, length]`` ``position_ids`` tensor, or None
    when no row holds more than one example or the positions do not describe packed examples (each position is
    0, where an example starts, or one more than the position before it; each row starts at 0)."""
    import torch

    if position_ids is None or position_ids.dim() != 2 or position_ids.size(1) < 2:
        return None
    starts = position_ids == 0
    follows = position_ids[:, 1:] == position_ids[:, :-1] + 1
    if not bool(starts[:, 0].all()) or not bool((starts[:, 1:] | follows).all()):
        return None
    if not bool(starts[:, 1:].any()):
        return None  # one example per row: nothing to split
    length = position_ids.size(1)
    rows = []
    for row in starts:
        first = torch.nonzero(row).flatten().tolist()
        rows.append(list(zip(first, [*first[1:], length], strict=True)))
    return rows


def block_causal(position_ids: Any) -> Any:
    """The ``[batch, length, length]`` bool mask of packed examples: query ``i`` sees key ``j`` when ``j <= i``
    and both are in the same example."""
    import torch

    example = (position_ids == 0).cumsum(-1)
    length = position_ids.size(-1)
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return (example[:, :, None] == example[:, None, :]) & causal


def _split(position_ids: Any, mask: Any, batch: int, length: int) -> Spans | None:
    """The spans to attend one by one, when ``mask`` is exactly their block-diagonal causal mask."""
    import torch

    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 4 or mask.size(1) != 1:
        return None
    if position_ids is None or position_ids.dim() != 2 or mask.shape[-2:] != (length, length):
        return None
    positions = position_ids.expand(batch, -1) if position_ids.size(0) == 1 else position_ids
    if positions.shape != (batch, length) or mask.size(0) not in (1, batch):
        return None
    found = spans(positions)
    if found is None or not torch.equal(mask[:, 0].expand(batch, -1, -1), block_causal(positions)):
        return None
    return found


def _cached_split(position_ids: Any, mask: Any, batch: int, length: int) -> Spans | None:
    global _last
    if _last is not None and _last[0]() is position_ids and _last[1]() is mask:
        return _last[2]
    found = _split(position_ids, mask, batch, length)
    try:
        _last = (weakref.ref(position_ids), weakref.ref(mask), found)
    except TypeError:  # None or an object without weak references: not kept
        _last = None
    return found


def _plain(module: Any, query: Any, key: Any, kwargs: dict[str, Any]) -> bool:
    """Whether this call's attention is its mask and nothing more, over the query's own tokens."""
    if not getattr(module, "is_causal", True) or key.size(-2) != query.size(-2) or kwargs.get("output_attentions"):
        return False
    return all(kwargs.get(name) is None for name in _SPECIAL)


def attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention-function signature (``query`` ``[batch, heads, length, dim]``; the output
    ``[batch, length, heads, dim]``). See the module docstring for when a call is split by example."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = None
    if attention_mask is not None and _plain(module, query, key, kwargs):
        rows = _cached_split(kwargs.get("position_ids"), attention_mask, query.size(0), query.size(-2))
    if rows is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = []
    for b, row in enumerate(rows):
        parts = [
            sdpa_attention_forward(
                module,
                query[b : b + 1, :, s:e],
                key[b : b + 1, :, s:e],
                value[b : b + 1, :, s:e],
                None,
                dropout=dropout,
                scaling=scaling,
                is_causal=True,
            )[0]
            for s, e in row
        ]
        out.append(torch.cat(parts, dim=1))
    return torch.cat(out, dim=0), None


def register() -> None:
    """Make ``ift_sdpa`` known to transformers (its masks are ``sdpa``'s)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    _registered = True


def use_for(model: Any) -> bool:
    """Switch ``model`` (under peft's wrapper, its base model) from ``sdpa`` to ``ift_sdpa`` (nothing else is
    switched); whether it was."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    register()
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, TypeError, KeyError, AttributeError):
        return False
    return getattr(model.config, "_attn_implementation", None) == NAME
