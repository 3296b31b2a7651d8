"""Losses over a language model's output head at the trained positions only, computed in chunks.

A causal LM's forward pass ends with ``logits = lm_head(hidden)`` over every position: ``tokens x vocabulary``
floats (8 x 512 x 49,152 x 4 B = 0.8 GB for a 135 M-parameter model), several copies of it through the
softmax and its gradient, although only the completion tokens are trained. Here the model runs up to its
head; the hidden states entering the head are kept at the trained positions only, and the head and the loss
are applied to them a chunk of rows at a time, each chunk recomputed in backward
(:func:`torch.utils.checkpoint.checkpoint`), so no ``[tokens x vocabulary]`` tensor is ever whole. Loss and
gradients equal the full-logits computation's to float tolerance (the sums run in another order).

How the hidden states are found: a forward pre-hook on the model's output embeddings
(``get_output_embeddings()``, found through peft's and DDP's wrappers) keeps the head's input and hands the
head an empty sequence instead. The head module is then called on the selected rows, so a head that is not a
plain ``Linear`` (LoRA on ``lm_head``, a ``modules_to_save`` copy) works too. Whether the model's logits are
exactly ``head(hidden)`` is checked on the first batch of each model, on a few positions. A model that changes
its logits after the head (logit soft-capping, a logit scale, BART's ``final_logits_bias`` when not zero) or
computes them without calling its output embeddings gets the full-logits fallback (for that first batch the
forward pass runs twice): the trained positions are selected from the whole logits (the memory of computing
them whole, the same results). Virtual tokens that prompt tuning prepends are dropped: the last ``length``
hidden states are the input's.

Adapters use :func:`head_inputs` and :func:`cross_entropy`; a trainer with its own objective over the logits
(``distill``) uses :func:`map_chunks` with several models' :class:`HeadInputs`. Importing this module does not
import torch.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: Logit elements (rows x vocabulary) computed at once: 8 Mi fp32 values, 32 MiB per copy.
#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = ["CHUNK_ELEMENTS", "HeadInputs", "cross_entropy", "head_inputs", "map_chunks", "uses_chunks"]

CHUNK_ELEMENTS = 1 << 23

#: Per model (the module whose forward is called): (the chunked path is exact for it, its vocabulary size).
_PROBED: weakref.WeakKeyDictionary[Any, tuple[bool, int]] = weakref.WeakKeyDictionary()

#: Positions whose logits the first call for a model computes through the head, to compare.
_PROBE_TOKENS = 8


@dataclass
class HeadInputs:
    """What a loss needs at the selected positions, one row per position in row-major batch order: the
    hidden states entering the head and the head module (``logits`` None), or, on the fallback path, the logits
    themselves (``hidden`` and ``head`` None)."""

    hidden: Any | None
    head: Any | None
    logits: Any | None
    vocab: int

    @property
    def rows(self) -> Any:
        return self.hidden if self.logits is None else self.logits

    @property
    def chunked(self) -> bool:
        """Whether the logits are computed chunk by chunk (False: the fallback path)."""
        return self.logits is None

    def to_logits(self, rows: Any) -> Any:
        """float32 logits of a slice of :attr:`rows`."""
        return (rows if self.head is None else self.head(rows)).float()


def head_inputs(model: Any, inputs: dict[str, Any], positions: Any, *, length: int) -> HeadInputs:
    """Run ``model(**inputs)`` and keep what its head sees at ``positions``.

    ``positions`` is a bool ``[batch, P]`` mask over the first ``P`` positions of the output sequence (a causal
    LM: ``labels[:, 1:] != -100``, so that position ``i`` predicts token ``i + 1``; an encoder-decoder: the
    decoder labels' mask); ``length`` is that sequence's length in the inputs (``input_ids`` for a causal LM,
    ``decoder_input_ids`` for an encoder-decoder), which places the positions after any virtual tokens.

    The first call for a model lets the head compute its first few positions and compares them with the logits
    the model returns; a model whose logits are not ``head(hidden)`` is remembered and gets the fallback."""
    import torch

    core = _unwrapped(model)
    known = _PROBED.get(core)
    head = _output_embeddings(core) if known is None or known[0] else None
    if head is None:
        logits = model(**inputs).logits
        _PROBED[core] = (False, int(logits.size(-1)))
        return HeadInputs(None, None, _select(logits, positions, length), int(logits.size(-1)))
    keep = 0 if known is not None else _PROBE_TOKENS
    seen: list[Any] = []

    def keep_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        seen.append(args[0])
        return (args[0].narrow(-2, 0, min(keep, args[0].size(-2))), *args[1:])  # logits for no or few positions

    handle = head.register_forward_pre_hook(keep_input)
    try:
        logits = model(**inputs).logits
    finally:
        handle.remove()
    if known is None:
        if not seen:  # the model computed its logits without calling the head: they are whole
            _PROBED[core] = (False, int(logits.size(-1)))
            return HeadInputs(None, None, _select(logits, positions, length), int(logits.size(-1)))
        with torch.no_grad():
            first = seen[0].narrow(-2, 0, min(keep, seen[0].size(-2)))
            direct = head(first)
            usable = (
                len(seen) == 1
                and seen[0].dim() == 3
                and direct.shape == logits.shape
                and torch.allclose(direct.float(), logits.float(), rtol=1e-5, atol=1e-6)
            )
        _PROBED[core] = (usable, int(logits.size(-1)))
        if not usable:  # logits changed after the head (soft-capping, a scale, a bias): the whole logits again
            logits = model(**inputs).logits
            return HeadInputs(None, None, _select(logits, positions, length), int(logits.size(-1)))
    elif len(seen) != 1:
        raise RuntimeError(
            f"{type(core).__name__} called its output embeddings {len(seen)} times in one forward "
            "pass (once when checked)"
        )
    return HeadInputs(_select(seen[0], positions, length), head, None, _PROBED[core][1])


def map_chunks(
    fn: Callable[..., Any], streams: Sequence[HeadInputs], extras: Sequence[Any] = (), *, elements: int | None = None
) -> tuple[Any, ...]:
    """Apply ``fn(logits_1, ..., logits_k, extra_1, ...)`` to chunks of rows and concatenate its results.

    Each stream gives its float32 logits for the chunk's rows (the same rows of every stream: several models on
    one batch); each extra (a tensor with one row per position, such as the target ids) is sliced alike. ``fn``
    returns a tensor, or a tuple of tensors, with one row per position. With gradients enabled each chunk is
    recomputed in backward, so only one chunk's logits are alive at a time, forward or backward. ``elements``:
    logit values per chunk (rows = elements // vocabulary), :data:`CHUNK_ELEMENTS` by default."""
    import torch
    from torch.utils.checkpoint import checkpoint

    n = streams[0].rows.size(0)
    if any(s.rows.size(0) != n for s in streams) or any(e.size(0) != n for e in extras):
        raise ValueError("every stream and extra needs one row per selected position")
    step = _rows_per_chunk(max(s.vocab for s in streams), elements)
    k = len(streams)

    def run(*args: Any) -> tuple[Any, ...]:
        out = fn(*(s.to_logits(a) for s, a in zip(streams, args[:k], strict=True)), *args[k:])
        return out if isinstance(out, tuple) else (out,)

    pieces = []
    for start in range(0, max(n, 1), step):  # an empty selection still gives (empty) results with a graph
        args = [s.rows[start : start + step] for s in streams] + [e[start : start + step] for e in extras]
        if torch.is_grad_enabled() and any(s.chunked for s in streams):
            pieces.append(checkpoint(run, *args, use_reentrant=False))
        else:
            pieces.append(run(*args))
    return tuple(torch.cat(column) for column in zip(*pieces, strict=True))


def cross_entropy(states: HeadInputs, targets: Any, *, elements: int | None = None) -> Any:
    """Per-position cross-entropy (float32, one value per selected position) of ``targets`` (their ids; -100 is
    ignored: loss 0, no gradient).

    A head that is a plain ``torch.nn.Linear`` without hooks (the usual ``lm_head``, tied or not) takes
    ``LinearHeadLoss`` (:func:`_linear_head_loss`): the same chunks and arithmetic, the head's weight gradient
    summed into one buffer. Through :func:`map_chunks` every chunk's backward makes a whole ``[vocabulary x hidden]``
    weight gradient that autograd then adds to the running sum: two of them alive at once (2 x 108 MiB for
    SmolLM2-135M in fp32, 2 x 1 GiB for a 128 k x 4096 head in bf16) and a fresh allocation per chunk. When the
    weight already has a gradient (a later pass of an accumulated step) the chunks are added straight into
    ``weight.grad``, where autograd would add them at the end of backward (:func:`_grad_to_add_into`). Other
    heads (LoRA on ``lm_head``, a ``modules_to_save`` copy, a hooked module) go through :func:`map_chunks`."""
    import torch
    import torch.nn.functional as F

    hidden = states.hidden
    linear = _plain_linear(states.head) if hidden is not None else None
    if hidden is not None and linear is not None and hidden.size(0) > 0:
        weight, bias = linear
        step = _rows_per_chunk(states.vocab, elements)
        device = hidden.device.type
        autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        losses: Any = _linear_head_loss().apply(hidden, weight, bias, targets, step, device, autocast)
        return losses
    (found,) = map_chunks(
        lambda logits, y: F.cross_entropy(logits, y, reduction="none"), [states], [targets], elements=elements
    )
    return found


def uses_chunks(model: Any) -> bool | None:
    """Whether the chunked path was found exact for ``model`` (None: not checked yet, no loss computed)."""
    found = _PROBED.get(_unwrapped(model))
    return None if found is None else found[0]


# --- internals -----------------------------------------------------------------------------------


def _plain_linear(head: Any) -> tuple[Any, Any] | None:
    """``(weight, bias)`` of a head that is exactly ``torch.nn.Linear`` with plain parameters and no hooks (what
    ``LinearHeadLoss`` may compute without calling the module); None otherwise."""
    import torch

    if type(head) is not torch.nn.Linear or head._forward_hooks or head._forward_pre_hooks:
        return None
    if getattr(head, "_hf_hook", None) is not None:  # accelerate's offloading moves weights in a hook
        return None
    if type(head.weight) is not torch.nn.Parameter or (
        head.bias is not None and type(head.bias) is not torch.nn.Parameter
    ):
        return None
    return head.weight, head.bias


def _rows_per_chunk(vocab: int, elements: int | None) -> int:
    """Rows whose logits fit in ``elements`` values (:data:`CHUNK_ELEMENTS` by default), at least one."""
    return max(1, (elements or CHUNK_ELEMENTS) // max(vocab, 1))


@functools.cache
def _linear_head_loss() -> Any:
    """The autograd function (:class:`LinearHeadLoss` inside), built on first use so that importing this module
    does not import torch."""
    import torch
    import torch.nn.functional as F

    class LinearHeadLoss(torch.autograd.Function):
        """Cross-entropy of ``linear(hidden, weight, bias).float()`` per row, a chunk of rows at a time. Backward
        recomputes each chunk's logits, turns them in place into their gradient (softmax minus the target's
        one-hot, times the upstream gradient) and adds the chunk's weight gradient into one buffer, so one
        ``[vocabulary x hidden]`` gradient exists, not one per chunk. Forward runs under the caller's autocast
        state and backward under the same one, so logits and dtypes are those of ``head(hidden).float()``; the
        gradient matmuls run in the logits' dtype, as autograd's would, and sum in the weight's dtype."""

        @staticmethod
        def forward(  # type: ignore[override]
            ctx: Any, hidden: Any, weight: Any, bias: Any, targets: Any, step: int, device: str, autocast: Any
        ) -> Any:
            losses = hidden.new_empty(hidden.size(0), dtype=torch.float32)
            with torch.autocast(device, dtype=autocast[1], enabled=autocast[0]):
                for start in range(0, hidden.size(0), step):
                    logits = F.linear(hidden[start : start + step], weight, bias).float()
                    losses[start : start + step] = F.cross_entropy(
                        logits, targets[start : start + step], reduction="none"
                    )
            ctx.save_for_backward(hidden, weight, bias, targets)
            ctx.step, ctx.device, ctx.autocast = step, device, autocast
            return losses

        @staticmethod
        def backward(ctx: Any, grad_losses: Any) -> Any:  # type: ignore[override]
            hidden, weight, bias, targets = ctx.saved_tensors
            want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
            grad_hidden = torch.empty_like(hidden) if want_hidden else None
            into = _grad_to_add_into(weight) if want_weight else None  # weight.grad, when it can take the sum
            grad_weight = None
            if want_weight:
                grad_weight = into if into is not None else torch.zeros_like(weight)
            grad_bias = torch.zeros_like(bias) if want_bias else None
            weight_c = None
            for start in range(0, hidden.size(0), ctx.step):
                rows, y = hidden[start : start + ctx.step], targets[start : start + ctx.step]
                with torch.autocast(ctx.device, dtype=ctx.autocast[1], enabled=ctx.autocast[0]):
                    logits = F.linear(rows, weight, bias)
                compute = logits.dtype
                grad = logits.float()  # a copy unless the logits are float32: then they become the gradient
                del logits
                grad.sub_(grad.logsumexp(dim=-1, keepdim=True)).exp_()
                kept = (y != -100).unsqueeze(1)
                grad.scatter_add_(1, y.clamp(min=0).unsqueeze(1), -kept.to(grad.dtype))
                grad.mul_(grad_losses[start : start + ctx.step].unsqueeze(1) * kept)
                grad = grad.to(compute)
                if weight_c is None:
                    weight_c = weight if weight.dtype == compute else weight.to(compute)
                if grad_hidden is not None:
                    grad_hidden[start : start + ctx.step] = grad @ weight_c
                if grad_weight is not None:
                    rows_c = rows if rows.dtype == compute else rows.to(compute)
                    if grad_weight.dtype == compute:
                        grad_weight.addmm_(grad.t(), rows_c)
                    else:  # autocast: the chunk's gradient in the compute dtype, summed in the weight's
                        grad_weight.add_(grad.t() @ rows_c)
                if grad_bias is not None:
                    grad_bias.add_(grad.sum(dim=0))
                del grad
            if into is not None:  # summed into weight.grad already: nothing more for autograd to add
                grad_weight = None
            return grad_hidden, grad_weight, grad_bias, None, None, None, None

    return LinearHeadLoss


def _grad_to_add_into(param: Any) -> Any | None:
    """``param.grad`` when a backward may add its gradient into it in place, as the parameter's
    ``AccumulateGrad`` would (``grad += new``) at the end of this backward; None when autograd must receive it.

    Only when nothing between could see the difference: the gradient exists already (a later micro-batch of an
    accumulated step), dense and shaped like ``param``; no graph is being built (``create_graph``); the
    parameter has no gradient hooks; this backward will run its ``AccumulateGrad`` (not ``torch.autograd.grad``
    or ``backward(inputs=...)`` that leave ``.grad`` alone); and torch.distributed is not initialised (DDP
    reduces gradients from hooks on ``AccumulateGrad``). Then the head's weight gradient needs no buffer of its
    own: 108 MiB less throughout the backward of SmolLM2-135M in fp32, whose tied weight's ``AccumulateGrad``
    runs only after the embedding's backward, at the very end."""
    import torch

    grad = param.grad
    if grad is None or torch.is_grad_enabled() or grad.layout != torch.strided:
        return None
    if grad.shape != param.shape or grad.dtype != param.dtype or grad.device != param.device:
        return None
    if param._backward_hooks or getattr(param, "_post_accumulate_grad_hooks", None):
        return None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return None
    node = torch.autograd.graph.get_gradient_edge(param).node
    return grad if torch._C._will_engine_execute_node(node) else None


def _unwrapped(model: Any) -> Any:
    """The module that owns ``get_output_embeddings`` (under DDP, the wrapped one; peft forwards it)."""
    import torch

    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _select(per_position: Any, positions: Any, length: int) -> Any:
    """Rows of a ``[batch, sequence, d]`` tensor at the mask's positions, after dropping leading virtual
    positions so the last ``length`` are the input's."""
    tail = per_position[:, per_position.size(1) - length :]
    return tail[:, : positions.size(1)][positions]


def _output_embeddings(core: Any) -> Any:
    import torch

    try:
        head = core.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    return head if isinstance(head, torch.nn.Module) else None
