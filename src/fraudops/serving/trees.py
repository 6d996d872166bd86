"""The numpy tree runtime: an XGBoost ``binary:logistic`` model evaluated with numpy, bit for bit.

XGBoost's ``inplace_predict`` has a fixed cost of a few hundred microseconds per call, whatever the row
count. For small batches the trees are evaluated with numpy instead (:class:`TreeEnsemble`): the same float32
comparisons, the same tree-by-tree float32 sum and the same sigmoid, so probabilities are bit-identical to the
booster's. Each model is verified against its booster when loaded (the numpy path is switched off, with a
warning and a metric, if a single probability differs) and the batch size up to which numpy is faster is
measured. The XGBoost versions whose JSON model format this reads are pinned in ``pyproject.toml``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fraudops.modeling.model import FraudModel, XGBoostModel

log = logging.getLogger("fraudops.serve")


class UnsupportedModel(ValueError):
    """The booster uses something the numpy evaluator does not reproduce (it then falls back to XGBoost)."""


class TreeEnsemble:
    """An XGBoost ``binary:logistic`` gbtree evaluated with numpy, bit-identical to ``inplace_predict``.

    All trees are flattened into node arrays; a leaf points to itself, so every row walks ``depth`` steps.
    XGBoost goes right when ``x >= split`` (float32), adds the leaves to the base margin one tree after the
    other in float32, then applies ``1 / (1 + expf(-x))``. numpy's float32 ``exp`` is not correctly rounded,
    so exp is taken in float64 and rounded; where that rounding is a near tie (about 1 % of rows) the libm
    that XGBoost uses may round the other way, and those rows are handed to the booster itself.
    """

    def __init__(
        self,
        feat: np.ndarray,
        thr: np.ndarray,
        child: np.ndarray,
        leaf: np.ndarray,
        roots: np.ndarray,
        depth: int,
        base_margin: np.float32,
        n_features: int,
    ) -> None:
        self.feat, self.thr, self.child, self.leaf, self.roots = feat, thr, child, leaf, roots
        self.depth, self.n_features = depth, n_features
        self.base = np.array([base_margin], dtype=np.float32)
        self.n_trees = len(roots)

    @classmethod
    def from_booster(cls, booster: Any, n_features: int) -> TreeEnsemble:
        learner = json.loads(booster.save_raw("json"))["learner"]
        objective = learner["objective"]["name"]
        if objective != "binary:logistic":
            raise UnsupportedModel(f"objective {objective}")
        gbm = learner["gradient_booster"]
        if gbm.get("name") != "gbtree":
            raise UnsupportedModel(f"booster {gbm.get('name')}")
        params = learner["learner_model_param"]
        if int(params.get("num_class", "0")) > 1 or int(params.get("num_target", "1")) > 1:
            raise UnsupportedModel("several outputs")
        base_score = float(str(params["base_score"]).strip("[]"))
        if not 0.0 < base_score < 1.0:
            raise UnsupportedModel(f"base_score {base_score}")
        base_margin = np.float32(np.log(base_score / (1.0 - base_score)))  # to within a few float32 ulps
        trees = gbm["model"]["trees"]
        if not trees:
            raise UnsupportedModel("no trees")
        feats, thrs, children, leaves, roots = [], [], [], [], []
        offset, depth = 0, 0
        for tree in trees:
            if any(int(t) != 0 for t in tree.get("split_type", [])) or tree.get("categories"):
                raise UnsupportedModel("categorical splits")
            if int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
                raise UnsupportedModel("vector leaves")
            left = np.asarray(tree["left_children"], dtype=np.int64)
            right = np.asarray(tree["right_children"], dtype=np.int64)
            cond = np.asarray(tree["split_conditions"], dtype=np.float64).astype(np.float32)
            index = np.asarray(tree["split_indices"], dtype=np.int64)
            n = len(left)
            is_leaf = left == -1
            if (index[~is_leaf] >= n_features).any():
                raise UnsupportedModel("a split on a feature beyond the model's inputs")
            own = np.arange(n)
            pair = np.empty((n, 2), dtype=np.intp)
            pair[:, 0] = np.where(is_leaf, own, left) + offset
            pair[:, 1] = np.where(is_leaf, own, right) + offset
            children.append(pair.ravel())
            feats.append(np.where(is_leaf, 0, index))
            thrs.append(np.where(is_leaf, np.float32(np.inf), cond))
            leaves.append(np.where(is_leaf, cond, np.float32(0)))
            roots.append(offset)
            node_depth = np.zeros(n, dtype=np.int64)
            for i in range(n):  # parents come before children in XGBoost's numbering
                if not is_leaf[i]:
                    node_depth[left[i]] = node_depth[right[i]] = node_depth[i] + 1
            depth = max(depth, int(node_depth.max()))
            offset += n
        ens = cls(
            feat=np.concatenate(feats).astype(np.intp),
            thr=np.concatenate(thrs).astype(np.float32),
            child=np.concatenate(children).astype(np.intp),
            leaf=np.concatenate(leaves).astype(np.float32),
            roots=np.asarray(roots, dtype=np.intp),
            depth=depth,
            base_margin=base_margin,
            n_features=n_features,
        )
        ens.base[0] = ens.exact_base_margin(booster)
        return ens

    def exact_base_margin(self, booster: Any) -> np.float32:
        """XGBoost's base margin to the bit: its logit of base_score rounds in its own way, so take the
        float32 next to ours that reproduces the booster's first-tree raw scores."""
        rows = verification_rows(self, 1000, seed=1)
        first = booster.inplace_predict(
            rows, validate_features=False, predict_type="margin", iteration_range=(0, 1)
        ).astype(np.float32)
        idx = np.full(len(rows), self.roots[0])
        for _ in range(self.depth):
            idx = self.child[(idx << 1) + (rows[np.arange(len(rows)), self.feat[idx]] >= self.thr[idx])]
        leaf0 = self.leaf[idx]
        up = down = self.base[0]
        for _ in range(64):
            for c in (up, down):
                if np.array_equal(c + leaf0, first):
                    return c
            up = np.nextafter(up, np.float32(np.inf))
            down = np.nextafter(down, np.float32(-np.inf))
        raise UnsupportedModel("cannot reproduce XGBoost's base margin")

    def margin(self, x: np.ndarray) -> np.ndarray:
        """Raw scores (float32) of a C-contiguous float32 matrix, without NaN (validated inputs)."""
        feat, thr, child = self.feat, self.thr, self.child
        n = x.shape[0]
        if n == 1:
            row = x[0]
            idx = self.roots
            for _ in range(self.depth):
                idx = child[(idx << 1) + (row[feat[idx]] >= thr[idx])]
            return np.cumsum(np.concatenate((self.base, self.leaf[idx])))[-1:]
        flat = x.reshape(-1)
        offsets = (np.arange(n, dtype=np.intp) * x.shape[1])[:, None]
        idx = np.broadcast_to(self.roots, (n, self.n_trees))
        for _ in range(self.depth):
            idx = child[(idx << 1) + (flat[feat[idx] + offsets] >= thr[idx])]
        summed = np.concatenate((np.broadcast_to(self.base, (n, 1)), self.leaf[idx]), axis=1)
        return np.cumsum(summed, axis=1)[:, -1]  # cumsum adds in tree order, like XGBoost

    def predict(self, x: np.ndarray, booster: Any) -> np.ndarray:
        """Probabilities (float32); near-tie rows of the exp rounding are scored by ``booster``."""
        neg = np.minimum(-self.margin(x), np.float32(88.7))
        e64 = np.exp(neg.astype(np.float64))
        e32 = e64.astype(np.float32)
        below = e32 - np.nextafter(e32, np.float32(0))
        above = np.nextafter(e32, np.float32(np.inf)) - e32
        ulp = np.minimum(below, above).astype(np.float64)
        tie = np.abs(np.abs(e64 - e32) - 0.5 * ulp) < 0.005 * ulp
        p = np.float32(1) / (np.float32(1) + e32)
        if tie.any():
            p[tie] = booster.inplace_predict(np.ascontiguousarray(x[tie]), validate_features=False)
        return p


def verification_rows(ens: TreeEnsemble, n: int, seed: int = 0) -> np.ndarray:
    """Rows whose values sit on, just below and just above the model's own split points."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, ens.n_features), dtype=np.float32)
    internal = np.isfinite(ens.thr)
    for f in range(ens.n_features):
        cuts = ens.thr[internal & (ens.feat == f)]
        if cuts.size == 0:
            continue
        v = rng.choice(cuts, n)
        side = rng.integers(-1, 2, n)
        v = np.where(side < 0, np.nextafter(v, np.float32(-np.inf)), v)
        x[:, f] = np.where(side > 0, np.nextafter(v, np.float32(np.inf)), v)
    return x


def _best_seconds(
    a: Callable[[], Any], b: Callable[[], Any], repeat: int = 7, number: int = 3
) -> tuple[float, float]:
    """Best time per call of a and of b, measured in turns so that a busy machine slows both alike."""
    a(), b()
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for k, fn in enumerate((a, b)):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            best[k] = min(best[k], (time.perf_counter() - t0) / number)
    return best[0], best[1]


def prepare_runtime(model: FraudModel) -> tuple[TreeEnsemble | None, int, dict[str, Any]]:
    """The numpy evaluator (verified bit-identical) and the batch size up to which it beats XGBoost."""
    info: dict[str, Any] = {"engine": "numpy" if model.kind == "logistic_regression" else "xgboost"}
    if not isinstance(model, XGBoostModel):
        return None, 0, info
    info["n_trees"] = int(model.booster.num_boosted_rounds())
    try:
        ens = TreeEnsemble.from_booster(model.booster, len(model.feature_names))
    except (UnsupportedModel, KeyError, ValueError) as e:
        info["numpy_trees"] = f"off: {e}"
        log.warning("numpy tree evaluator off (%s); serving with XGBoost only", e)
        return None, 0, info
    rows = verification_rows(ens, 2000)
    expected = model.booster.inplace_predict(rows, validate_features=False)
    got = np.concatenate(
        [ens.predict(rows[:300], model.booster)]
        + [ens.predict(rows[i : i + 1], model.booster) for i in range(300, 400)]
        + [ens.predict(rows[i : i + 16], model.booster) for i in range(400, len(rows), 16)]
    )
    if not np.array_equal(got, expected):
        info["numpy_trees"] = f"off: {int((got != expected).sum())} of {len(rows)} probabilities differ"
        log.warning("numpy tree evaluator disagrees with XGBoost; serving with XGBoost only")
        return None, 0, info
    timings = {}
    small = 0
    for n in (1, 2, 4, 8, 16, 32, 64):
        xs = np.ascontiguousarray(rows[:n])
        t_np, t_xgb = _best_seconds(
            functools.partial(ens.predict, xs, model.booster),
            functools.partial(model.booster.inplace_predict, xs, validate_features=False),
        )
        timings[n] = {"numpy_us": round(t_np * 1e6, 1), "xgboost_us": round(t_xgb * 1e6, 1)}
        if t_np >= t_xgb:
            break
        small = n
    info.update(
        numpy_trees="on (verified bit-identical)", numpy_max_rows=small, depth=ens.depth, calibration=timings
    )
    if small:
        info["engine"] = f"numpy trees up to {small} rows, xgboost above"
    return (ens if small else None), small, info
