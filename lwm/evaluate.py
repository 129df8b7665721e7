"""Evaluation: episodes over seeds, statistics with bootstrap confidence intervals, linear probes, result files.

Knows no particular world (`lwm` never imports `envs`): `launch/eval.py` builds the worlds, the scripted
baselines and the ground-truth labels and hands them in.

* `run_episodes` steps a `Driver` (N single-agent environments) or a `TeamDriver` (W worlds x A agents) with a
  policy until every environment (world) has finished the same number of episodes, so the episodes kept do not
  favour short ones; an `on_step` hook sees every step with the episode it belongs to (for probe data).
* `make_policy` is the trained agent's policy as the drivers call it; with `shadow_params` a second model (e.g. a
  freshly initialised one) observes the very same stream in lock-step, fed the actions the first one took, so
  both models' latent states describe identical episodes.
* `summarize` gives mean, std and a percentile-bootstrap confidence interval (deterministic given `seed`).
* `probe_accuracy` fits one L2-regularised logistic regression per label column on training episodes and
  reports held-out accuracy beside the majority-class base rate.
* `write_results` writes `results.json` and `results.md` from one dict; `plot_*` write PNGs with matplotlib.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

# ------------------------------------------------------------------------------------------------ statistics


def bootstrap_ci(values: Sequence[float], seed: int = 0, resamples: int = 2000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean at `level` (deterministic given `seed`)."""
    x = np.asarray(values, np.float64).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must lie strictly between 0 and 1.")
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def summarize(values: Sequence[float], seed: int = 0, resamples: int = 2000, level: float = 0.95) -> dict[str, Any]:
    """{mean, std (population), n, ci_low, ci_high} of `values`."""
    x = np.asarray(values, np.float64).ravel()
    low, high = bootstrap_ci(x, seed, resamples, level)
    return {"mean": float(x.mean()), "std": float(x.std()), "n": int(x.size), "ci_low": low, "ci_high": high}


def summarize_episodes(episodes: Sequence[Mapping[str, float]], metrics: Sequence[str], seed: int = 0,
                       resamples: int = 2000) -> dict[str, dict[str, Any]]:
    """`summarize` of every named metric over the episodes (each metric with its own bootstrap stream)."""
    if not episodes:
        raise ValueError("no episodes to summarize.")
    out = {}
    for i, name in enumerate(metrics):
        if name not in episodes[0]:
            raise KeyError(f"metric {name!r} is not in the episodes; they hold {sorted(episodes[0])}.")
        out[name] = summarize([e[name] for e in episodes], seed=seed * 1_000 + i, resamples=resamples)
    return out


# ------------------------------------------------------------------------------------------------- episodes


def _units(driver: Any) -> tuple[int, int]:
    """(environments or worlds, streams per unit) of a Driver or TeamDriver."""
    if hasattr(driver, "W") and hasattr(driver, "A"):
        return int(driver.W), int(driver.A)
    return len(driver.envs), 1


def run_episodes(driver: Any, policy: Callable, episodes: int,
                 on_step: Callable[[dict, np.ndarray], None] | None = None,
                 max_iterations: int = 100_000) -> list[dict]:
    """Runs `driver` until every unit (environment or world) has finished ceil(episodes / units) episodes.

    Returns `episodes` episode dicts (the driver's: return, length and any env metrics, plus `unit` and `index`,
    the unit's episode count), ordered by (index, unit). `on_step(step, episode_index [units])` receives each
    driver step (observations, flags, actions and the policy's extras) and which episode of each unit it is.
    """
    if episodes < 1:
        raise ValueError(f"episodes={episodes} must be >= 1.")
    units, per_unit = _units(driver)
    need = math.ceil(episodes / units)
    count = np.zeros(units, np.int64)  # finished episodes per unit
    done: list[dict] = []
    seen_last: list[np.ndarray] = []

    def hook(step: dict) -> None:
        last = np.asarray(step["is_last"])[::per_unit]
        seen_last.append(np.flatnonzero(last))
        if on_step is not None:
            on_step(step, count.copy())

    driver.pop_episodes()
    for _ in range(max_iterations):
        if np.all(count >= need):
            break
        seen_last.clear()
        driver.step(policy, on_step=hook)
        finished = driver.pop_episodes()
        which = seen_last[0] if seen_last else np.zeros(0, np.int64)
        if len(which) != len(finished):
            raise RuntimeError(f"the driver reported {len(finished)} finished episodes but {len(which)} ends.")
        for unit, episode in zip(which, finished, strict=True):
            done.append({**episode, "unit": int(unit), "index": int(count[unit])})
            count[unit] += 1
    else:
        raise RuntimeError(f"{max_iterations} steps passed before every environment finished {need} episode(s); "
                           "does the world end its episodes (a time limit)?")
    done.sort(key=lambda e: (e["index"], e["unit"]))
    return done[:episodes]


def features(latent: Mapping[str, Any]) -> np.ndarray:
    """[N, deter + stoch·classes] float32: the RSSM state as the actor and critic see it (deter ⊕ flat stoch)."""
    deter = np.asarray(latent["deter"], np.float32)
    stoch = np.asarray(latent["stoch"], np.float32)
    return np.concatenate([deter, stoch.reshape(stoch.shape[0], -1)], axis=-1)


def make_policy(agent: Any, params: Any, num: int, seed: int, greedy: bool,
                shadow_params: Any = None, plan: int = 0) -> Callable:
    """`act(obs, is_first) -> (actions, extra)` for a driver; `extra["feat"]` holds the latent features [N, F].

    With `plan` > 0 the lookahead head's action is the model's one-step best over `plan` prior draws
    (`Agent._plan`), not the actor's.

    With `shadow_params`, a second model of the same architecture observes the same stream in lock-step (its
    recurrent input is the action the first model took) and its features are `extra["shadow_feat"]`.
    """
    state = {"carry": agent.init_policy(num), "key": jax.random.key(seed)}
    if shadow_params is not None:
        state["shadow"] = agent.init_policy(num)
    planning = {"plan": plan} if plan else {}  # an explicit plan=0 would be a second jit cache entry (a retrace)

    def act(obs, is_first):
        state["key"], sub, sub2 = jax.random.split(state["key"], 3)
        carry, actions, latent = agent.policy(params, state["carry"], obs, is_first, sub, greedy=greedy, **planning)
        state["carry"] = carry
        extra = {"feat": features(jax.device_get(latent))}
        if shadow_params is not None:
            shadow, _, shadow_latent = agent.policy(shadow_params, state["shadow"], obs, is_first, sub2, greedy=greedy)
            state["shadow"] = {"state": shadow["state"], "action": carry["action"]}
            extra["shadow_feat"] = features(jax.device_get(shadow_latent))
        return jax.device_get(actions), extra

    act.state = state
    return act


# --------------------------------------------------------------------------------------------------- probes


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 10.0, iterations: int = 25) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method; `x` [n, d] (a bias column is added), `y` [n] in
    {0, 1}. Returns the weights [d + 1] (bias last; the bias is not penalised)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xb = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    d = xb.shape[1]
    penalty = np.full(d, float(l2))
    penalty[-1] = 0.0
    w = np.zeros(d)
    p0 = np.clip(y.mean(), 1e-6, 1 - 1e-6)
    w[-1] = math.log(p0 / (1 - p0))
    for _ in range(iterations):
        p = _sigmoid(xb @ w)
        grad = xb.T @ (p - y) + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty + 1e-8)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return w


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   l2: float = 10.0) -> dict[str, Any]:
    """Held-out accuracy of one linear (logistic) probe per label column, pooled over columns and test samples.

    `x_*` [n, F] features (standardised with the training statistics), `y_*` [n, C] booleans. A column constant
    in the training data predicts that constant. `base_rate`: the accuracy of always predicting each column's
    training majority; `balanced_accuracy` (and `base_balanced_accuracy`, of the majority guess) see
    `balanced_accuracy`; `positive_rate`: the share of true labels in the test data. `l2` is the ridge penalty on
    the standardised weights (summed loss, so it shrinks less as data grow); uninformative features then stay
    near the base rate instead of fitting noise.
    """
    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    y_train, y_test = np.asarray(y_train).astype(bool), np.asarray(y_test).astype(bool)
    if y_train.ndim == 1:
        y_train, y_test = y_train[:, None], y_test[:, None]
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError(f"probes need training and test samples; got {len(x_train)} and {len(x_test)}.")
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    xs_train, xs_test = (x_train - mean) / std, (x_test - mean) / std
    preds, bases = [], []
    for c in range(y_train.shape[1]):
        majority = y_train[:, c].mean() >= 0.5
        bases.append(np.full(len(x_test), majority))
        if np.all(y_train[:, c] == y_train[0, c]):
            preds.append(np.full(len(x_test), y_train[0, c]))
        else:
            w = fit_logistic(xs_train, y_train[:, c], l2=l2)
            preds.append((xs_test @ w[:-1] + w[-1]) > 0)
    pred, base = np.stack(preds, 1), np.stack(bases, 1)
    return {"accuracy": float(np.mean(pred == y_test)), "base_rate": float(np.mean(base == y_test)),
            "balanced_accuracy": balanced_accuracy(pred, y_test),
            "base_balanced_accuracy": balanced_accuracy(base, y_test), "positive_rate": float(y_test.mean()),
            "n_train": int(len(x_train)), "n_test": int(len(x_test)), "columns": int(y_train.shape[1])}


def balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Mean of the recall of true and of false labels, pooled over columns (0.5 = no information; None when
    the test labels hold only one class)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    pos, neg = truth.sum(), (~truth).sum()
    if pos == 0 or neg == 0:
        return None
    return float(0.5 * ((pred & truth).sum() / pos + (~pred & ~truth).sum() / neg))


def split_episodes(ids: Sequence[Any], test_frac: float, seed: int) -> tuple[set, set]:
    """(training ids, held-out ids): a seeded random `test_frac` of the distinct episode ids, at least one each."""
    unique = sorted(set(ids))
    if len(unique) < 2:
        raise ValueError(f"probes need at least 2 episodes (one to train, one to test); got {len(unique)}.")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_test = min(max(1, round(test_frac * len(unique))), len(unique) - 1)
    test = {unique[i] for i in order[:n_test]}
    return set(unique) - test, test


# ------------------------------------------------------------------------------------------------- results


def fmt(value: Any, digits: int = 2) -> str:
    """A number as `results.md` prints it (fixed decimals); None as n/a."""
    if value is None:
        return "n/a"
    return f"{float(value):.{digits}f}"


def fmt_stat(stat: Mapping[str, Any] | None, digits: int = 2) -> str:
    """`mean ± std [ci_low, ci_high]`, dropping the parts a (published) row does not have."""
    if stat is None or stat.get("mean") is None:
        return "n/a"
    text = fmt(stat["mean"], digits)
    if stat.get("std") is not None:
        text += f" ± {fmt(stat['std'], digits)}"
    if stat.get("ci_low") is not None:
        text += f" [{fmt(stat['ci_low'], digits)}, {fmt(stat['ci_high'], digits)}]"
    if stat.get("note"):
        text += f" ({stat['note']})"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def results_markdown(results: Mapping[str, Any]) -> str:
    """The markdown report of a results dict (see `write_results`)."""
    meta = results.get("meta", {})
    lines = [f"# Evaluation: {meta.get('world', '?')}", ""]
    for key in ("checkpoint", "step", "world", "seeds", "episodes", "mode", "command"):
        if key in meta:
            value = meta[key]
            lines.append(f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}")
    lines += ["", "Cells: mean ± std [95% bootstrap CI of the mean] over episodes; published rows as printed in "
              "their source.", ""]
    for name, suite in results.get("suites", {}).items():
        lines += [f"## {suite.get('title', name)}", ""]
        metrics = suite["metrics"]
        labels = suite.get("labels", {})
        header = ["team" if suite.get("team") else "agent", "source", "episodes"] + [labels.get(m, m)
                                                                                      for m in metrics]
        rows = []
        for row in suite["rows"]:
            stats = row["metrics"]
            n = row.get("episodes")
            rows.append([row["name"], row["source"], str(n) if n is not None else "n/a"]
                        + [fmt_stat(stats.get(m)) for m in metrics])
        lines += _table(header, rows) + [""]
        probes = suite.get("probes")
        if probes:
            lines += [f"### {probes.get('title', 'Belief probes')}", ""]
            orders = probes["orders"]
            names = [probes.get("labels", {}).get(o, o) for o in orders]
            header = ["model", "source"] + names + [f"{n} (balanced)" for n in names]
            rows = [[r["name"], r["source"]] + [fmt(r["accuracy"].get(o)) for o in orders]
                    + [fmt(r.get("balanced", {}).get(o)) for o in orders] for r in probes["rows"]]
            lines += _table(header, rows) + [""]
            lines += [f"- {n}" for n in probes.get("notes", [])] + [""]
        lines += [f"- {n}" for n in suite.get("notes", [])]
        lines.append("")
    for plot in results.get("plots", []):
        lines.append(f"![{Path(plot).stem}]({Path(plot).name})")
    return "\n".join(lines).rstrip() + "\n"


def write_results(results: Mapping[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Writes `<out>/results.json` and `<out>/results.md`; returns both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    md_path.write_text(results_markdown(results))
    return json_path, md_path


# -------------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl ([] when it is missing); unreadable lines are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_curves(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], out: str | Path,
                x: str = "step", title: str = "") -> Path | None:
    """Learning curves (one panel per key present in the rows) against `x`; None when no key has data."""
    present = [k for k in keys if any(k in r and x in r for r in rows)]
    if not present:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.2), squeeze=False)
    for ax, key in zip(axes[0], present, strict=True):
        pts = [(r[x], r[key]) for r in rows if key in r and x in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=1.2)
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def plot_bars(rows: Sequence[Mapping[str, Any]], metric: str, out: str | Path, title: str = "") -> Path | None:
    """Bars of one metric per row (error bars: std; published rows hatched); None when no row has it."""
    items = [(r["name"], r["source"], r["metrics"][metric]) for r in rows
             if r["metrics"].get(metric) and r["metrics"][metric].get("mean") is not None]
    if not items:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(items) + 1.5), 3.4))
    xs = np.arange(len(items))
    means = [s["mean"] for _, _, s in items]
    errs = [s.get("std") or 0.0 for _, _, s in items]
    colours = ["#4c72b0" if src == "ours" else "#dd8452" if src.startswith("published") else "#8c8c8c"
               for _, src, _ in items]
    bars = ax.bar(xs, means, yerr=errs, color=colours, capsize=3)
    for bar, (_, src, _) in zip(bars, items, strict=True):
        if src.startswith("published"):
            bar.set_hatch("//")
    ax.set_xticks(xs, [n for n, _, _ in items], rotation=30, ha="right", fontsize=8)
    ax.set_title(title or metric)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def plot_probes(probes: Mapping[str, Any], out: str | Path) -> Path:
    """Grouped bars: probe accuracy per order for every row (ours, random init, base rate, published)."""
    plt = _pyplot()
    orders = probes["orders"]
    rows = probes["rows"]
    fig, ax = plt.subplots(figsize=(9.0, 3.4))
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        values = [row["accuracy"].get(o) for o in orders]
        xs = np.arange(len(orders)) + i * width
        ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=row["name"],
               hatch="//" if row["source"].startswith("published") else None)
    ax.set_xticks(np.arange(len(orders)) + 0.4 - width / 2, [probes.get("labels", {}).get(o, o) for o in orders])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
