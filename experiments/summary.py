"""The short table an entry point prints at the end of a run."""

from collections.abc import Mapping


def format_summary(metrics: Mapping[str, float], locations: Mapping[str, str]) -> str:
    """A two-part plain-text table: final metrics, then where checkpoints and logs are."""
    rows = [(k, f"{v:.4f}") for k, v in sorted(metrics.items())]
    rows += [(k, v) for k, v in locations.items() if v]
    if not rows:
        return ""
    width = max(len(k) for k, _ in rows)
    lines = ["-" * (width + 40)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(lines[0])
    return "\n".join(lines)
