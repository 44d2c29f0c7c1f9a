"""Panoptic FPN's heuristic fusion of instance masks and a semantic map.

Instances are pasted in decreasing score order, each only where nothing is pasted yet, and
skipped when more than ``overlap_threshold`` of its mask is already covered; pasting stops at
the first score below ``instance_score_threshold``. The remaining pixels take their stuff
class from the semantic map, one segment per class, dropped when smaller than
``stuff_area_threshold`` pixels. Pixels whose semantic class is a thing class (detectron2's
catch-all "things" label generalised) or void stay 0. These are the rules of detectron2's
``combine_semantic_and_instance_outputs`` and panopticapi's
``combine_semantic_and_instance_predictions``.

The references paste one instance at a time over the whole image. Here the score-order
pasting is solved on the (instance, pixel) pairs of the masks (:func:`paste_in_score_order`):
one pass over the masks, then a few passes over pairs for the whole batch at once, with no
loop over instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..structures import InstancePrediction, PanopticPrediction
from .mask_inference import panoptic_predictions, thing_mask

__all__ = ["panoptic_fpn_fusion", "paste_in_score_order"]


_LANE_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def _signed(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


class _Lanes:
    """Constants for int64 words seen as ``8 // lane_bytes`` lanes of ``8 * lane_bytes`` bits.

    Lane values stay below half the lane range, so ``x + (half - 1)`` sets a lane's top bit
    exactly where the lane is not zero, without a carry into the next lane.
    """

    def __init__(self, lane_bytes: int) -> None:
        self.bytes = lane_bytes
        self.bits = bits = 8 * lane_bytes
        self.per_word = 8 // lane_bytes
        lanes = range(self.per_word)
        self.ones = sum(1 << (bits * j) for j in lanes)
        self.below_top = _signed(sum(((1 << (bits - 1)) - 1) << (bits * j) for j in lanes))
        self.top = _signed(sum(1 << (bits * j + bits - 1) for j in lanes))

    def nonzero(self, x: torch.Tensor) -> torch.Tensor:
        """1 in every lane of ``x`` that is not zero, 0 elsewhere (lanes below half range)."""
        # the top bit of the top lane is the sign bit: shift it down logically
        top = ((x + self.below_top) & self.top)
        return ((top >> (self.bits - 1)) & self.ones)

    def count(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the 0/1 lanes of every word.

        Multiplying by a word of ones adds every lane into the top lane (the product wraps
        modulo 2**64, as int64 arithmetic does on every backend; the sum, at most 8, fits).
        """
        return ((x * self.ones) >> (64 - self.bits)) & ((1 << self.bits) - 1)


class _Pasting(NamedTuple):
    owner: torch.Tensor  # [sum H_i W_i] lanes (uint8/int16/int32): 1 + rank in its image of the owner, 0 none
    accepted: torch.Tensor  # bool [sum n_i] by image, then rank
    orders: list[torch.Tensor]  # per image: instance index of each rank
    passing: list[int]  # per image: ranks that may be pasted (the score prefix)
    pixel_offsets: list[int]
    rank_offsets: list[int]


def _paste(masks: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], overlap_threshold: float,
           score_threshold: float | None) -> _Pasting:
    if len(masks) != len(scores):
        raise ValueError(f"{len(masks)} mask stacks but {len(scores)} score vectors")
    dev = masks[0].device
    for i, (m, s) in enumerate(zip(masks, scores)):
        if m.ndim != 3 or s.shape != (m.shape[0],):
            raise ValueError(f"image {i}: masks {tuple(m.shape)} and scores {tuple(s.shape)}: expected [M, H, W] and [M]")
        if m.dtype != torch.bool:
            raise TypeError(f"image {i}: masks must be bool, got {m.dtype}")
    # every image's score order at once: scores padded with -inf sort last
    counts = [int(m.shape[0]) for m in masks]
    width = max(counts + [1])
    table = torch.full((len(masks), width), float("-inf"), device=dev)
    for i, s in enumerate(scores):
        table[i, : counts[i]] = s.float()
    ranked, order_table = torch.sort(table, dim=1, descending=True, stable=True)
    real = torch.arange(width, device=dev) < torch.tensor(counts, device=dev)[:, None]
    ok = real if score_threshold is None else real & (ranked >= score_threshold)
    passing_t = torch.cumprod(ok.long(), 1).sum(1)  # pasting stops at the first low score
    in_order_t = ((order_table == torch.arange(width, device=dev)) | ~real).all(1)
    host = torch.stack([passing_t, in_order_t.long()]).tolist()  # the one mid-way host copy
    passing, in_order = host
    orders = [order_table[i, :c] for i, c in enumerate(counts)]
    n_max = max(passing)
    ln = _Lanes(1 if n_max <= 127 else 2 if n_max <= (1 << 15) - 2 else 4)
    values, ranks, local_ranks, positions = [], [], [], []
    pixel_offsets, rank_offsets, word_offsets = [], [], []
    rank_off = word_off = pixel_off = 0
    for m, order, n, sorted_ in zip(masks, orders, passing, in_order):
        hw = m.shape[-2] * m.shape[-1]
        nw = -(-hw // ln.per_word)
        pixel_offsets.append(pixel_off)
        rank_offsets.append(rank_off)
        word_offsets.append(word_off)
        if n and hw:
            chosen = (m[:n] if sorted_ else m.index_select(0, order[:n])).reshape(n, hw)
            flat = chosen.to(_LANE_DTYPES[ln.bytes]) if ln.bytes > 1 else chosen.contiguous().view(torch.uint8)
            # int64 words need whole words per row and an 8-byte aligned start (masks may be
            # views into a larger buffer, as pasted masks are)
            if hw % ln.per_word or (flat.storage_offset() * flat.element_size()) % 8:
                padded = flat.new_zeros(n, nw * ln.per_word)
                padded[:, :hw] = flat
                flat = padded
            words = flat.view(torch.int64)  # [n, nw]
            r, w = torch.nonzero(words, as_tuple=True)
            values.append(words[r, w])
            ranks.append(r + rank_off)
            local_ranks.append(r)
            positions.append(w + word_off)
        rank_off += n
        word_off += nw
        pixel_off += hw
    owner_words = torch.zeros(max(word_off, 1), dtype=torch.int64, device=dev)
    accepted = torch.zeros(rank_off, dtype=torch.bool, device=dev)
    if values:
        # (word, rank) order: the masks on one word become consecutive, higher-ranked first
        # int32 keys sort faster; a batch has far fewer than 2**31 words
        pos, by_word = torch.sort(torch.cat(positions).int(), stable=True)
        v, rank, local = torch.cat(values)[by_word], torch.cat(ranks)[by_word], torch.cat(local_ranks)[by_word]
        area = torch.zeros(rank_off, dtype=torch.int64, device=dev).index_add_(0, rank, ln.count(v))
        start = torch.ones_like(pos, dtype=torch.bool)
        start[1:] = pos[1:] != pos[:-1]
        shared = torch.zeros_like(start)  # words under two masks or more: only they can cover
        shared[1:] = ~start[1:]
        shared[:-1] |= ~start[1:]
        si = torch.nonzero(shared).squeeze(1)
        sv, srank = v[si], rank[si]
        s_start = start[si]
        s_seg = torch.cumsum(s_start, 0) - 1
        candidate = area > 0
        safe_area = area.clamp(min=1).double()

        def within(covered: torch.Tensor) -> torch.Tensor:
            # the references' test, in the same float64 arithmetic: rejected if covered / area > t
            return ~(covered.double() / safe_area > overlap_threshold)

        seg_first = torch.nonzero(s_start).squeeze(1)[s_seg]  # first pair of every pair's word

        def covering(accept: torch.Tensor) -> torch.Tensor:
            """Per shared pair, per lane: accepted higher-ranked masks there (a count per lane)."""
            a = torch.where(accept[srank], sv, 0)
            # segmented exclusive prefix sum: the running sum wraps modulo 2**64, but its
            # difference within one word position is exact and small, so no lane carries
            before = torch.cumsum(a, 0) - a
            return before - before[seg_first]

        def covered_area(lanes: torch.Tensor, values: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
            counts = ln.count(values & ln.nonzero(lanes))
            if dev.type == "cpu":  # the faster kernel here; sums of small integers are exact
                return torch.bincount(ranks, weights=counts.double(), minlength=rank_off)
            # integer sums on accelerators: a weighted bincount is refused in deterministic mode
            return torch.zeros(rank_off, dtype=torch.int64, device=dev).index_add_(0, ranks, counts)

        # coverage only grows with the accepted set: a mask within the limit when every
        # candidate is accepted is accepted in the end ("sure") ...
        by_all = covering(candidate)
        sure = candidate & within(covered_area(by_all, sv, srank))
        accepted = sure
        # one host copy decides which passes are needed at all
        any_rejected, = torch.stack([(candidate & ~sure).any()]).tolist()
        by_sure = covering(sure) if any_rejected else by_all
        # ... and one over the limit with the sure masks alone is rejected in the end
        unsure = candidate & ~sure & within(covered_area(by_sure, sv, srank))
        if any_rejected and bool(unsure.any()):
            ui = torch.nonzero(unsure[srank]).squeeze(1)
            uv, ur, useg, ubase = sv[ui], srank[ui], s_seg[ui], by_sure[ui]
            u_start = torch.ones_like(useg, dtype=torch.bool)
            u_start[1:] = useg[1:] != useg[:-1]
            u_first = torch.nonzero(u_start).squeeze(1)[torch.cumsum(u_start, 0) - 1]
            # the rounds decide the rest, on their own pairs, over the coverage by sure masks
            for _ in range(rank_off + 1):
                a = torch.where(accepted[ur], uv, 0)
                before = torch.cumsum(a, 0) - a
                covered = covered_area(ubase + before - before[u_first], uv, ur)
                decided = sure | (unsure & within(covered))
                if torch.equal(decided, accepted):
                    break
                accepted = decided
        changed = not torch.equal(accepted, sure)
        covered_lanes = ln.nonzero(covering(accepted) if changed else by_sure)
        # a lane is owned by the first accepted mask on it; words under one mask are its own
        free = torch.full_like(v, ln.ones)
        free[si] = covered_lanes ^ ln.ones
        owned = torch.where(accepted[rank], v, 0) & free
        # at most one mask owns each lane, so the sum writes (rank + 1) into it without carries
        owner_words.index_add_(0, pos, owned * (local + 1))
    lanes = owner_words.view(_LANE_DTYPES[ln.bytes])
    if word_off * ln.per_word == pixel_off:  # no image ends inside a word: lanes are the pixels
        owner = lanes[:pixel_off]
    else:
        owner = torch.cat([lanes[o * ln.per_word: o * ln.per_word + m.shape[-2] * m.shape[-1]]
                           for m, o in zip(masks, word_offsets)])
    return _Pasting(owner, accepted, orders, passing, pixel_offsets, rank_offsets)


@torch.no_grad()
def paste_in_score_order(
    masks: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    overlap_threshold: float,
    score_threshold: float | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Greedy score-order pasting of every image's instance masks, solved without a loop.

    Instance ``r`` (in decreasing score order, stable) is accepted when its mask is not empty,
    its score is at least ``score_threshold`` (and so are all scores above it: pasting stops
    at the first low score) and at most ``overlap_threshold`` of its area is covered by the
    masks of accepted higher-ranked instances; it then owns the pixels of its mask that no
    accepted higher-ranked instance covers.

    Each decision depends only on the decisions above it, so the accepted set is the unique
    fixed point of ``accept = decide(accept)``, and iterating that map makes at least one more
    rank final per round. Coverage only grows with the accepted set, so a mask within the limit
    when every candidate is accepted is accepted in the end, and one over the limit with only
    those is rejected; the rounds start from the former and decide the remaining masks on their
    own words. All of it works on packed words: every mask, seen as int64 words of 8 one-byte
    pixels (wider lanes past 127 instances), contributes only its non-zero words, ordered by word
    position and rank; a segmented prefix sum over the words two masks or more share counts, lane
    by lane, the accepted higher-ranked masks on each pixel. The masks are read once, for the
    whole batch at once. "Covered" is decided as the references do: rejected when
    ``covered / area > overlap_threshold`` in float64.

    Args:
        masks: ``B`` bool ``[M_i, H_i, W_i]``.
        scores: ``B`` float ``[M_i]``.
        overlap_threshold: maximum covered fraction of an accepted mask.
        score_threshold: minimum score of an accepted instance (None: no minimum).

    Returns:
        ``(owners, accepted)``: per image int64 ``[H_i, W_i]`` index (into the image's
        instances) of the instance owning each pixel, -1 where none; bool ``[M_i]``.
    """
    if not len(masks):
        return [], []
    p = _paste(masks, scores, overlap_threshold, score_threshold)
    owners, accepts = [], []
    for m, order, n, po, ro in zip(masks, p.orders, p.passing, p.pixel_offsets, p.rank_offsets):
        h, w = m.shape[-2:]
        lookup = torch.cat([order.new_full((1,), -1), order[:n]])
        owners.append(lookup[p.owner[po: po + h * w].long()].reshape(h, w))
        acc = torch.zeros(m.shape[0], dtype=torch.bool, device=m.device)
        acc[order[:n]] = p.accepted[ro: ro + n]
        accepts.append(acc)
    return owners, accepts


@torch.no_grad()
def panoptic_fpn_fusion(
    instances: Sequence[InstancePrediction],
    semantics: Sequence[torch.Tensor],
    thing_classes: torch.Tensor | Sequence[int] | Sequence[bool],
    num_classes: int,
    overlap_threshold: float = 0.5,
    stuff_area_threshold: int = 4096,
    instance_score_threshold: float = 0.5,
) -> list[PanopticPrediction]:
    """Fuse per-image instance predictions with semantic class maps into panoptic results.

    Args:
        instances: ``B`` :class:`InstancePrediction` (``masks`` bool ``[M, H, W]``, ``labels``
            int64 ``[M]``, ``scores`` float ``[M]``).
        semantics: ``B`` int64 ``[H, W]`` class maps (values outside ``[0, K)`` are void).
        thing_classes: contiguous thing ids or a bool ``[K]`` vector.
        num_classes: ``K``.
        overlap_threshold: maximum covered fraction of an instance mask to still paste it.
        stuff_area_threshold: minimum pixels of a stuff segment.
        instance_score_threshold: instances scoring below it are not pasted.

    Returns:
        ``B`` :class:`PanopticPrediction`: ``panoptic_seg`` int32 ``[H, W]`` (0 = void); thing
        segments first (score order, ids from 1), then stuff segments in class order with
        ``score`` 1.0.
    """
    if len(instances) != len(semantics):
        raise ValueError(
            f"{len(instances)} instance predictions but {len(semantics)} semantic maps"
        )
    if not len(instances):
        return []
    masks, scores = [], []
    for i, (inst, sem) in enumerate(zip(instances, semantics)):
        m = inst["masks"].to(sem.device)
        if m.ndim != 3 or tuple(m.shape[1:]) != tuple(sem.shape):
            raise ValueError(
                f"image {i}: instance masks {tuple(m.shape)} do not match semantic map "
                f"{tuple(sem.shape)}"
            )
        masks.append(m.bool())
        scores.append(inst["scores"].to(sem.device).float())
    p = _paste(masks, scores, overlap_threshold, instance_score_threshold)
    k, b = num_classes, len(semantics)
    dev = semantics[0].device
    is_thing = thing_mask(thing_classes, k, dev)
    # one int32 key per pixel: 0 void, 1 + c a stuff candidate of class c, K + o the o-th
    # ranked pasted instance; one bincount gives the stuff areas, one lookup the segment ids
    class_key = torch.cat([torch.zeros(1), torch.arange(1, k + 1), torch.zeros(1)]).int().to(dev)
    # maps without void (a model's argmax) need no clamping: one host copy tells which
    bounds = torch.stack([torch.stack(torch.aminmax(s)) if s.numel() else torch.zeros(2, dtype=s.dtype, device=dev)
                          for s in semantics]).tolist()
    keys, areas = [], []
    for sem, po, (lo, hi) in zip(semantics, p.pixel_offsets, bounds):
        owner = p.owner[po: po + sem.numel()].int()
        flat = sem.reshape(-1)
        cls = (flat.int() + 1) if 0 <= lo and hi < k else class_key.index_select(0, flat.clamp(-1, k).add_(1))
        key = torch.where(owner == 0, cls, owner + k)
        keys.append(key)
        areas.append(torch.bincount(key, minlength=k + 1)[1: k + 1])
    area = torch.stack(areas)
    stuff_ok = (area >= stuff_area_threshold) & (area > 0) & ~is_thing
    # thing segment ids count from 1 over each image's accepted ranks; stuff ids follow
    n_pass = torch.tensor(p.passing, device=dev)
    image_of_rank = torch.repeat_interleave(torch.arange(b, device=dev), n_pass)
    acc = p.accepted.long()
    things_per_image = torch.zeros(b, dtype=torch.int64, device=dev).index_add_(0, image_of_rank, acc)
    earlier = torch.cumsum(things_per_image, 0) - things_per_image
    thing_id = torch.where(p.accepted, torch.cumsum(acc, 0) - earlier[image_of_rank], 0)
    stuff_id = torch.cumsum(stuff_ok.long(), 1) + things_per_image[:, None]
    stuff_lookup = torch.cat([stuff_id.new_zeros(b, 1), torch.where(stuff_ok, stuff_id, 0)], 1).int()
    thing_id32 = thing_id.int()
    maps = [torch.cat([stuff_lookup[i], thing_id32[ro: ro + n]]).index_select(0, key).view(sem.shape)
            for i, (sem, key, n, ro) in enumerate(zip(semantics, keys, p.passing, p.rank_offsets))]
    sorted_labels = torch.cat([inst["labels"].to(dev)[order[:n]] for inst, order, n in
                               zip(instances, p.orders, p.passing)])
    sorted_scores = torch.cat([s[order[:n]] for s, order, n in zip(scores, p.orders, p.passing)])
    # thing rows first, in rank order, then stuff rows in class order
    f64 = {"dtype": torch.float64, "device": dev}
    thing_rows = torch.stack([image_of_rank.double(), thing_id.double(), sorted_labels.double(),
                              torch.ones(acc.numel(), **f64), sorted_scores.double(), p.accepted.double()], 1)
    stuff_rows = torch.stack([torch.arange(b, **f64)[:, None].expand(b, k), stuff_id.double(),
                              torch.arange(k, **f64).expand(b, k), torch.zeros(b, k, **f64),
                              torch.ones(b, k, **f64), stuff_ok.double()], 2).reshape(b * k, 6)
    return panoptic_predictions(maps, [thing_rows, stuff_rows])
