"""Near-duplicate search with MinHash signatures and locality-sensitive hashing (Broder 1997;
Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3).

Each text becomes a set of shingles (word or character n-grams, hashed to 32 bits). A MinHash signature of
``num_perm`` values estimates the Jaccard similarity of two sets; LSH cuts the signature into ``bands`` of
``rows`` values, and two texts become a *candidate pair* when one band is identical. Every candidate pair is
then checked exactly (Jaccard of the shingle sets, or ROUGE-L), so the stated threshold is exact: LSH only
decides which pairs are looked at, and its bands are chosen so that a pair at the threshold is proposed with
probability >= 0.95 (more similar pairs: higher). Each text is compared with at most ``max_candidates``
earlier texts, so the work is linear in the number of texts even when many of them look alike.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from ift.builtin_plugins.cleaning.text import normalize, words

if TYPE_CHECKING:
    import numpy as np

_CHUNK = 8192  # shingles hashed at once (x num_perm x 8 bytes of memory)
_RECALL_AT_THRESHOLD = 0.95

Shingles = Literal["word", "char"]


def shingle_set(text: str, kind: Shingles = "word", size: int = 3) -> set[int]:
    """32-bit hashes of the word (or character) n-grams of the normalised text. A text shorter than
    ``size`` is one shingle; an empty text has none."""
    if kind == "word":
        tokens = words(text)
        grams = [" ".join(tokens[i : i + size]) for i in range(max(1, len(tokens) - size + 1))] if tokens else []
    else:
        flat = normalize(text)
        grams = [flat[i : i + size] for i in range(max(1, len(flat) - size + 1))] if flat else []
    return {zlib.crc32(g.encode()) for g in grams}


def word_bag(text: str) -> set[int]:
    """The words of the normalised text as a multiset, written as a set of (word, occurrence) hashes, so
    the Jaccard similarity of two bags is that of the multisets: |A & B| / |A | B| counting repeats."""
    seen: dict[str, int] = {}
    out = set()
    for token in words(text):
        k = seen[token] = seen.get(token, 0) + 1
        out.add(zlib.crc32(f"{token}\x00{k}".encode()))
    return out


def signatures(sets: Sequence[set[int]], num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """MinHash signatures, shape (len(sets), num_perm), uint32. Permutation k hashes a shingle x with the
    multiply-add-shift scheme ``(a_k * x + b_k mod 2**64) >> 32`` (Dietzfelbinger 1996), vectorised over all
    shingles in chunks. An empty set gets 2**32 - 1 everywhere."""
    import numpy as np  # imported on first use: building the plugin host stays light

    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    lengths = np.fromiter((len(s) for s in sets), dtype=np.int64, count=len(sets))
    flat = np.fromiter((h for s in sets for h in s), dtype=np.uint64, count=int(lengths.sum()))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.full((len(sets), num_perm), 2**32 - 1, dtype=np.uint32)
    buffer = np.empty((max(_CHUNK, int(lengths.max(initial=0))), num_perm), dtype=np.uint64)
    i = 0
    while i < len(sets):
        j = max(i + 1, int(np.searchsorted(ends, starts[i] + _CHUNK, side="right")))
        rows = np.flatnonzero(lengths[i:j]) + i
        if rows.size:
            lo, hi = starts[i], ends[j - 1]
            hashed = buffer[: hi - lo]
            np.multiply(flat[lo:hi, None], a, out=hashed)
            hashed += b
            hashed >>= np.uint64(32)
            out[rows] = np.minimum.reduceat(hashed, starts[rows] - lo, axis=0)
        i = j
    return out


def band_layout(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest false candidates) for which a pair with Jaccard
    similarity ``threshold`` is still a candidate with probability >= 0.95; bands = num_perm // rows."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= _RECALL_AT_THRESHOLD:
            best = (bands, rows)
    return best


def band_keys(signature: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (text, band): a hash of the band's values, salted with the band's number.
    Colliding keys only add candidates, which are checked exactly."""
    import numpy as np  # imported on first use: building the plugin host stays light

    mult = np.random.default_rng(0).integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    keys = np.empty((signature.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            block = signature[:, band * rows : (band + 1) * rows]
            keys[:, band] = (block * mult).sum(axis=1, dtype=np.uint64) ^ np.uint64(band * 0x9E3779B97F4A7C15 % 2**64)
    return keys


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison & Dix 1986; Hyyro 2004): one
    big-integer step per token of ``b`` instead of len(a) Python steps, same result as the dynamic program."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full
    for token in b:
        match = row & masks.get(token, 0)
        row = ((row + match) | (row - match)) & full
    return len(a) - row.bit_count()


def rouge_l_f1(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F1 of two token lists (the ``rouge_l`` metric's definition)."""
    lcs = lcs_length(a, b)
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))


class NearDuplicateFinder:
    """Finds, for each text, an earlier *kept* text it nearly duplicates.

    ``method = "minhash"``: Jaccard similarity of the shingle sets >= ``threshold``.
    ``method = "rouge-l"``: ROUGE-L F1 of the word sequences >= ``threshold``. Candidates come from LSH over
    the texts' word multisets at Jaccard ``t / (2 - t)``: the LCS never exceeds the common words ``c``, so
    F1 = 2 LCS / (m + n) >= t implies c / (m + n - c) >= t / (2 - t). Pairs under that bound are rejected
    before the LCS is computed.
    """

    def __init__(
        self,
        *,
        method: Literal["minhash", "rouge-l"] = "minhash",
        threshold: float = 0.7,
        shingles: Shingles = "word",
        shingle_size: int | None = None,
        num_perm: int = 128,
        bands: int | None = None,
        max_candidates: int = 100,
        seed: int = 1,
    ) -> None:
        self.method = method
        self.threshold = threshold
        self.shingles = shingles
        self.shingle_size = shingle_size or (3 if shingles == "word" else 5)
        self.num_perm = num_perm
        self.set_threshold = threshold if method == "minhash" else threshold / (2 - threshold)
        if bands is None:
            self.bands, self.rows = band_layout(self.set_threshold, num_perm)
        else:
            self.bands, self.rows = bands, num_perm // bands
        self.max_candidates = max_candidates
        self.seed = seed
        self.candidates_checked = 0

    def shingle_sets(self, texts: Sequence[str]) -> list[set[int]]:
        if self.method == "rouge-l":
            return [word_bag(t) for t in texts]
        return [shingle_set(t, self.shingles, self.shingle_size) for t in texts]

    def find(
        self, texts: Sequence[str], *, protected: Sequence[bool] | None = None, sets: Sequence[set[int]] | None = None
    ) -> list[int | None]:
        """For each text, the index of the kept text it duplicates, or None when it is kept.

        Texts are visited in order, except that ``protected`` ones (eval records) go first and are always
        kept, so a text that duplicates a protected one is the one dropped. Empty texts are always kept.
        ``sets`` may hold the texts' :meth:`shingle_sets`, computed once for several searches.
        """
        import numpy as np

        if sets is None:
            sets = self.shingle_sets(texts)
        keys = band_keys(signatures(sets, self.num_perm, self.seed), self.bands, self.rows)
        # only keys that two or more texts share can make a candidate pair: the rest need no index
        _, inverse, counts = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
        shared = (counts[inverse] > 1).reshape(keys.shape)
        shared[[not s for s in sets]] = False
        same = self._verifier(texts, sets)
        protect = list(protected) if protected is not None else [False] * len(texts)
        active = np.flatnonzero(shared.any(axis=1)).tolist()
        order = [i for i in active if protect[i]] + [i for i in active if not protect[i]]
        cap = self.max_candidates
        buckets: dict[int, list[int]] = {}  # band key -> kept texts (at most `cap` each)
        result: list[int | None] = [None] * len(texts)
        checked = 0
        for i in order:
            row = keys[i][shared[i]].tolist()
            match = None
            seen: set[int] = set()
            for key in row:
                for j in buckets.get(key, ()):
                    if j not in seen:
                        seen.add(j)
                        if same(i, j):
                            match = j
                            break
                        if len(seen) >= cap:
                            break
                if match is not None or len(seen) >= cap:
                    break
            checked += len(seen)
            if match is not None and not protect[i]:
                result[i] = match
                continue
            for key in row:
                bucket = buckets.setdefault(key, [])
                if len(bucket) < cap:
                    bucket.append(i)
        self.candidates_checked = checked
        return result

    def _verifier(self, texts: Sequence[str], sets: Sequence[set[int]]) -> Callable[[int, int], bool]:
        threshold, bound = self.threshold, self.set_threshold
        if self.method == "minhash":
            return lambda i, j: jaccard(sets[i], sets[j]) >= threshold
        tokens: dict[int, list[str]] = {}

        def same(i: int, j: int) -> bool:
            if jaccard(sets[i], sets[j]) < bound - 1e-12:  # exact necessary condition, cheap
                return False
            for k in (i, j):
                if k not in tokens:
                    tokens[k] = words(texts[k])
            return rouge_l_f1(tokens[i], tokens[j]) >= threshold

        return same
