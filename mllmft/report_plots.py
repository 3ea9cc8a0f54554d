"""mllmft-report's pictures, from its rows (mean and std over seeds per strategy or knob setting).

- tradeoff: upstream score S_u against target score S_t, one point per row with the seed spread as
  error bars, the zero-shot model, the Pareto front (no other row is better on both) and iso-H
  curves (H = 2·S_t·S_u / (S_t + S_u) is constant along each);
- h: H per row, sorted, with its spread;
- knob_<strategy>_<knob>: S_t, S_u and H against a numeric knob a strategy was swept over.

Each is written as PNG (for reading) and SVG (for a paper).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

MERGE = " (merge of "  # mllmft.report.label of an mllmft-merge run


def is_merge(row: dict) -> bool:
    """A merge's row, by its own name: the shown label may add the aliases of the runs it repeats
    ("full (= task_arithmetic (merge of full))" is a strategy's row)."""
    return MERGE in row.get("name", row["strategy"])


def plot_all(rows: list[dict], varying: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    # names and knob values are the runs' own text: a "$" in one is no TeX formula to parse
    with matplotlib.rc_context({"text.parse_math": False}):
        for groups in _by_target(rows).values():
            suffix = "" if len(_by_target(rows)) == 1 else f"_{_slug(groups[0]['target'])}"
            points = [r for r in groups if "S_u" in r and "S_t" in r]
            if points:
                written += _save(tradeoff_figure(points, varying), out / f"tradeoff{suffix}")
            if any("H" in r for r in groups):
                written += _save(h_figure(groups, varying), out / f"h{suffix}")
            for (name, knob), curve in knob_curves(groups, varying).items():
                written += _save(knob_figure(name, knob, curve), out / f"knob_{_slug(name)}_{_slug(knob)}{suffix}")
    return written


def _by_target(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["target"], r["upstream"])].append(r)
    return groups


def row_name(row: dict, varying: list[str], short: bool = False) -> str:
    """The strategy (a merge without what it merged, if short) and the knobs that tell its rows apart."""
    knobs = [f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in varying if row.get(k) not in (None, "")]
    name = row["strategy"].split(MERGE)[0] if short else row["strategy"]
    return name + (f" ({', '.join(knobs)})" if knobs else "")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats or equals on both axes, by increasing x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def tradeoff_figure(rows: list[dict], varying: list[str]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6.5))
    top = 5 + max(
        max(r["S_t"] + r["S_t_std"], r["S_u"] + r["S_u_std"], (r.get("zeroshot") or {}).get("S_u") or 0) for r in rows
    )
    top = min(100.0, top)
    for h in range(10, 100, 10):  # iso-H: S_u = H·S_t / (2·S_t − H), defined for S_t > H / 2
        xs = [h / 2 + (top - h / 2) * i / 200 for i in range(1, 201)]
        pts = [(x, h * x / (2 * x - h)) for x in xs if 2 * x > h and h * x / (2 * x - h) <= top]
        if pts:
            ax.plot(*zip(*pts), color="0.85", lw=0.8, zorder=0)
            ax.annotate(f"H={h}", pts[-1], fontsize=7, color="0.55", ha="right", va="bottom")
    for merged, marker, colour in ((False, "o", "tab:blue"), (True, "s", "tab:orange")):
        group = [r for r in rows if is_merge(r) == merged]
        if group:
            ax.errorbar(
                [r["S_t"] for r in group],
                [r["S_u"] for r in group],
                xerr=[r["S_t_std"] for r in group],
                yerr=[r["S_u_std"] for r in group],
                fmt=marker,
                color=colour,
                ms=5,
                capsize=2,
                lw=0.7,
                elinewidth=0.6,
                ecolor=colour,
                alpha=0.85,
                label="post-hoc merge (of a fine-tuned run)" if merged else "fine-tuning strategy",
            )
    place_labels(ax, [(row_name(r, varying, short=True), r["S_t"] / top, r["S_u"] / top) for r in rows])
    front = pareto_front([(r["S_t"], r["S_u"]) for r in rows])
    ax.plot(*zip(*front), color="tab:red", lw=1.2, ls="--", label="Pareto front")
    zeroshot = _zeroshot(rows)
    if zeroshot and zeroshot.get("S_t") is not None and zeroshot.get("S_u") is not None:
        ax.plot(zeroshot["S_t"], zeroshot["S_u"], "*", color="black", ms=12, label="zero-shot model")
    seeds = sorted({r["seeds"] for r in rows})
    ax.set(
        xlim=(0, top),
        ylim=(0, top),
        xlabel=f"target score S_t on {rows[0]['target']} (0-100)",
        ylabel=f"upstream score S_u, mean of {rows[0]['upstream']} (0-100)",
        title=f"{rows[0]['model']}: specialisation vs generalisation "
        f"(mean ± std over {'/'.join(map(str, seeds))} seeds)",
    )
    ax.legend(loc="upper center", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# where a point's label may go, in axes fractions from the point: right/left, above/below, then further out
OFFSETS = [
    (0.008, 0.006),
    (0.008, -0.03),
    (-0.008, 0.006),
    (-0.008, -0.03),
    (0.008, 0.04),
    (0.008, -0.064),
    (-0.008, 0.04),
    (-0.008, -0.064),
    (0.008, 0.074),
    (0.008, -0.098),
]


def place_labels(ax, labels: list[tuple[str, float, float]], char: float = 0.0075, height: float = 0.024) -> None:
    """Each label at the first offset where its box (estimated from its length) overlaps no label placed
    before it; a label moved away from its point gets a thin leader line."""
    placed: list[tuple[float, float, float, float]] = []
    for text, x, y in sorted(labels, key=lambda t: (-t[2], t[1])):
        width = char * len(text)
        for dx, dy in OFFSETS:
            left = x + dx if dx > 0 else x + dx - width
            box = (left, y + dy, left + width, y + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        far = abs(dy) > 0.035
        ax.annotate(
            text,
            (x, y),
            xycoords="axes fraction",
            xytext=(box[0], box[1]),
            textcoords="axes fraction",
            fontsize=7,
            ha="left",
            va="bottom",
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if far else None,
        )


def _zeroshot(rows: list[dict]) -> dict | None:
    """The base model's scores: the most common zero-shot pair (peft's virtual tokens shift their own)."""
    pairs = [json.dumps(r["zeroshot"], sort_keys=True) for r in rows if r.get("zeroshot")]
    return json.loads(max(set(pairs), key=pairs.count)) if pairs else None


def h_figure(rows: list[dict], varying: list[str]):
    import matplotlib.pyplot as plt

    ranked = sorted((r for r in rows if "H" in r), key=lambda r: r["H"])
    from matplotlib.artist import Artist
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(8, 0.28 * len(ranked) + 1.5))
    colours = ["tab:orange" if is_merge(r) else "tab:blue" for r in ranked]
    ax.barh(
        range(len(ranked)),
        [r["H"] for r in ranked],
        xerr=[r["H_std"] for r in ranked],
        color=colours,
        capsize=2,
        error_kw={"lw": 0.8},
    )
    ax.set_yticks(range(len(ranked)), [row_name(r, varying) for r in ranked], fontsize=8)
    handles: list[Artist] = [
        Patch(color="tab:blue", label="fine-tuning strategy"),
        Patch(color="tab:orange", label="post-hoc merge"),
    ]
    zeroshot = _zeroshot(ranked)
    if zeroshot and zeroshot.get("H") is not None:
        handles.append(
            ax.axvline(zeroshot["H"], color="black", lw=0.8, ls=":", label=f"zero-shot H = {zeroshot['H']:.1f}")
        )
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set(xlabel="H = 2·S_t·S_u / (S_t + S_u)  (mean ± std over seeds)")
    ax.set_title(f"{ranked[0]['model']}, target {ranked[0]['target']}: H per strategy", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def knob_curves(rows: list[dict], varying: list[str]) -> dict[tuple[str, str], list[dict]]:
    """(strategy, knob) -> its rows by knob value, for each numeric knob that alone tells a
    strategy's rows apart (two values at least)."""
    curves = {}
    by_name: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_name[r["strategy"]].append(r)
    for name, group in by_name.items():
        changing = [k for k in varying if len({r.get(k) for r in group}) > 1]
        if len(group) < 2 or len(changing) != 1:
            continue
        knob = changing[0]
        try:
            curves[(name, knob)] = sorted(group, key=lambda r: float(r[knob]))
        except (TypeError, ValueError):  # a knob that is not a number: no curve
            continue
    return curves


def knob_figure(name: str, knob: str, curve: list[dict]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [float(r[knob]) for r in curve]
    for col, style in (("S_t", "o-"), ("S_u", "s-"), ("H", "^--")):
        if all(col in r for r in curve):
            ax.errorbar(
                xs,
                [r[col] for r in curve],
                yerr=[r[f"{col}_std"] for r in curve],
                fmt=style,
                capsize=2,
                ms=4,
                lw=1,
                label={"S_t": f"S_t ({curve[0]['target']})", "S_u": "S_u (upstream)"}.get(col, col),
            )
    ax.set(xlabel=knob, ylabel="score (0-100)", title=f"{name}: scores against {knob}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _save(fig, stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")
