"""The model-vs-baselines table of a metrics.json, as printed on the terminal."""

from __future__ import annotations

from typing import Any

from sciformer.evaluation.report import coverage_lines, metrics_table


def format_table(metrics: dict[str, Any]) -> str:
    """A heading (task, number of held-out examples, scope), the markdown table and, when the
    model reports interval coverage, its coverage at a few lead times."""
    head = f"{metrics['task']} on {metrics.get('n_examples', '?')} held-out examples"
    if metrics.get("scope"):
        head += f" ({metrics['scope']})"
    cover = coverage_lines(metrics)
    return head + "\n" + "\n".join(metrics_table(metrics)) + (
        "\n\n" + "\n".join(cover).rstrip() if cover else "")
