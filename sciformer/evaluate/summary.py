"""A compact model-vs-baselines table of a metrics.json, for the terminal and summary.md."""

from __future__ import annotations

from typing import Any

LOWER_IS_BETTER = {"perplexity", "nrmse", "vrmse", "smape", "crps", "loss"}


def scalar_metrics(metrics: dict[str, Any]) -> list[str]:
    """Names of the scalar metrics shared by the model and the baselines, in model order."""
    return [k for k, v in metrics["model"].items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and k not in ("n_masked",)]


def format_table(metrics: dict[str, Any], bold_best: bool = False) -> str:
    """Markdown table: one row per predictor (model first), one column per scalar metric."""
    names = scalar_metrics(metrics)
    rows = {"model": metrics["model"], **metrics.get("baselines", {})}
    best = {}
    for k in names:
        vals = [r[k] for r in rows.values() if isinstance(r.get(k), (int, float))]
        if vals:
            best[k] = min(vals) if k in LOWER_IS_BETTER else max(vals)
    lines = ["| predictor | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for k in names:
            v = row.get(k)
            text = "–" if v is None else f"{v:.4g}"
            if bold_best and v is not None and v == best.get(k):
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    head = f"{metrics['task']} on {metrics.get('n_examples', '?')} held-out examples"
    if metrics.get("scope"):
        head += f" ({metrics['scope']})"
    return head + "\n" + "\n".join(lines)
