"""Exact (path-dependent) TreeSHAP of an XGBoost model in numpy, fast enough for one alert on the request
path: the same values as ``Booster.predict(..., pred_contribs=True)`` (to float32 rounding), at a fraction
of its CPU time a row on a 300-tree depth-6 model (benchmarks/bench_capture.py).

For one leaf whose path splits on the distinct features U (d = |U|), feature i in U gets
``v * (o_i - z_i) * sum over S subset of U-{i} of |S|!(d-|S|-1)!/d! * prod_{j in S} o_j * prod_{j not in
S, j != i} z_j``, where ``z_j`` is the product of the cover ratios (child / parent) of the path's splits on
j and ``o_j`` is 1 when the row follows all of them, else 0 (TreeSHAP's "zero" and "one" fractions; a
feature split twice on a path is one player, as in XGBoost). Every ``o`` is 0 or 1, so the value only
depends on which of the path's features the row follows: a pattern of d bits. Each leaf's values are
computed for all 2^d patterns when the model is loaded; a row then costs one comparison per path split and
one table look-up per (leaf, feature). The bias is ``base margin + sum of v * prod z``, so contributions
plus bias sum to the margin exactly (up to float64 rounding).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

CHUNK_ROWS = 16  # rows evaluated together (their arrays stay a few MB)
MAX_TABLE = 16_000_000
"""Table entries (float64) a model may need; deeper ensembles fall back to XGBoost's pred_contribs."""


class Unsupported(ValueError):
    """A booster this evaluator does not handle (then XGBoost's own pred_contribs is used)."""


def _weights(d: int) -> np.ndarray:
    """Shapley weights |S|!(d-|S|-1)!/d! for |S| = 0..d-1."""
    return np.array([math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d) for s in range(d)])


def _leaf_tables(z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Contributions of leaves with d distinct path features: z (leaves, d) zero fractions, v (leaves,)
    leaf values -> (leaves, 2^d, d), indexed by the pattern of followed features and the feature slot."""
    n, d = z.shape
    patterns = np.arange(1 << d)
    o = ((patterns[:, None] >> np.arange(d)) & 1).astype(np.float64)  # (P, d)
    w = _weights(d)
    out = np.empty((n, 1 << d, d))
    for i in range(d):
        poly = np.zeros((n, 1 << d, d))  # coefficients of t^0..t^(d-1) of prod_{j != i} (z_j + o_j t)
        poly[:, :, 0] = 1.0
        for j in range(d):
            if j == i:
                continue
            shifted = np.zeros_like(poly)
            shifted[:, :, 1:] = poly[:, :, :-1]
            poly = poly * z[:, None, j : j + 1] + shifted * o[None, :, j : j + 1]
        out[:, :, i] = v[:, None] * (o[None, :, i] - z[:, None, i]) * (poly @ w)
    return out


class TreeShap:
    """Precomputed exact TreeSHAP of a ``binary:logistic`` gbtree booster."""

    def __init__(self, booster: Any, n_features: int) -> None:
        learner = json.loads(booster.save_raw("json"))["learner"]
        gbm = learner["gradient_booster"]
        if gbm.get("name") != "gbtree" or learner["objective"]["name"] != "binary:logistic":
            raise Unsupported("only binary:logistic gbtree models")
        base_score = float(str(learner["learner_model_param"]["base_score"]).strip("[]"))
        self.n_features = n_features
        paths: list[list[tuple[int, float, bool, float]]] = []  # per leaf: (feature, split, right, ratio)
        values: list[float] = []
        for tree in gbm["model"]["trees"]:
            if any(int(t) != 0 for t in tree.get("split_type", [])):
                raise Unsupported("categorical splits")
            left, right = tree["left_children"], tree["right_children"]
            cond, index, cover = tree["split_conditions"], tree["split_indices"], tree["sum_hessian"]
            stack: list[tuple[int, list[tuple[int, float, bool, float]]]] = [(0, [])]
            while stack:
                node, path = stack.pop()
                if left[node] == -1:
                    paths.append(path)
                    values.append(float(cond[node]))
                    continue
                for child, goes_right in ((left[node], False), (right[node], True)):
                    ratio = float(cover[child]) / float(cover[node])
                    stack.append((child, [*path, (int(index[node]), float(cond[node]), goes_right, ratio)]))
        depth = max(max(len(p) for p in paths), 1)
        if depth > 8:
            raise Unsupported(f"trees deeper than 8 ({depth})")
        n = len(paths)
        # per leaf and path split: feature, float32 split, the side the path takes (padding: x >= -inf, right)
        feat = np.zeros((n, depth), dtype=np.intp)
        thr = np.full((n, depth), -np.inf, dtype=np.float32)
        right = np.ones((n, depth), dtype=bool)
        lengths = np.array([len(p) for p in paths], dtype=np.int64)
        distinct = np.zeros(n, dtype=np.int64)
        slots_of: list[list[int]] = []  # per leaf: the slot of each path split
        slot_feats: list[list[int]] = []  # per leaf: the feature of each slot
        zeros: list[list[float]] = []
        for k, path in enumerate(paths):
            slots: dict[int, int] = {}
            z: list[float] = []
            of: list[int] = []
            for s, (f, c, r, ratio) in enumerate(path):
                if f not in slots:
                    slots[f] = len(slots)
                    z.append(1.0)
                z[slots[f]] *= ratio
                of.append(slots[f])
                feat[k, s], thr[k, s], right[k, s] = f, np.float32(c), r
            distinct[k] = len(slots)
            slots_of.append(of)
            slot_feats.append(list(slots))
            zeros.append(z)
        sizes = (np.int64(1) << lengths) * distinct  # per leaf: [mask of off-path splits][slot]
        if int(sizes.sum()) > MAX_TABLE:
            raise Unsupported("trees too deep for the precomputed tables")
        v = np.asarray(values)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        table = np.zeros(int(sizes.sum()))
        slot_of = np.zeros((n, depth), dtype=np.int64)
        for k, of in enumerate(slots_of):
            slot_of[k, : len(of)] = of
        for d, length in sorted(set(zip(distinct.tolist(), lengths.tolist(), strict=True))):
            if d == 0:
                continue
            group = np.flatnonzero((distinct == d) & (lengths == length))
            by_pattern = _leaf_tables(np.array([zeros[k] for k in group]), v[group])  # (g, 2^d, d)
            masks = np.arange(1 << length)
            failed = np.zeros((len(group), 1 << length), dtype=np.int64)  # slots off the path, per mask
            for s in range(length):
                failed |= ((masks[None, :] >> s) & 1) << slot_of[group, s][:, None]
            pattern = ((1 << d) - 1) & ~failed
            block = by_pattern[np.arange(len(group))[:, None], pattern].reshape(len(group), -1)
            table[offsets[group][:, None] + np.arange(block.shape[1])] = block
        prod_z = np.array([math.prod(z) for z in zeros])
        self.table = table
        self.bias = float(np.log(base_score / (1.0 - base_score)) + np.sum(v * prod_z))
        self.feat, self.thr, self.right = feat, thr, right
        # one entry per (leaf, slot), sorted by feature: its leaf, where its values start, their stride
        entry_leaf = np.repeat(np.arange(n), distinct)
        entry_feat = np.array([f for fs in slot_feats for f in fs], dtype=np.intp)
        slot_index = np.arange(len(entry_leaf)) - np.repeat(np.cumsum(distinct) - distinct, distinct)
        order = np.argsort(entry_feat, kind="stable")
        self.entry_leaf = entry_leaf[order].astype(np.int32)  # int32: half the index bytes to read
        self.entry_base = (offsets[entry_leaf] + slot_index)[order].astype(np.int32)
        self.entry_stride = distinct[entry_leaf][order].astype(np.int32)
        counts = np.bincount(entry_feat, minlength=n_features)
        self.used = np.flatnonzero(counts)  # features some path splits on
        self.starts = (np.cumsum(counts) - counts)[self.used]

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """(rows, features + 1) float64: per-feature contributions, then the bias."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros((len(x), self.n_features + 1))
        out[:, -1] = self.bias
        for lo in range(0, len(x), CHUNK_ROWS):
            rows = x[lo : lo + CHUNK_ROWS]
            off_path = (rows[:, self.feat] >= self.thr) != self.right  # (rows, leaves, depth)
            masks = np.packbits(off_path, axis=2, bitorder="little")[:, :, 0].astype(np.int32)
            vals = self.table[self.entry_base + masks[:, self.entry_leaf] * self.entry_stride]
            out[lo : lo + len(rows), self.used] = np.add.reduceat(vals, self.starts, axis=1)
        return out
