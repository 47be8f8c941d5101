"""The model-vs-baselines table of a metrics.json, as printed on the terminal."""

from __future__ import annotations

from typing import Any

from sciformer.evaluate.report import metrics_table


def format_table(metrics: dict[str, Any]) -> str:
    """A heading (task, number of held-out examples, scope) and the markdown table."""
    head = f"{metrics['task']} on {metrics.get('n_examples', '?')} held-out examples"
    if metrics.get("scope"):
        head += f" ({metrics['scope']})"
    return head + "\n" + "\n".join(metrics_table(metrics))
