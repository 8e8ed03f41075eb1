"""The timeline: every run's forwards on one plotly figure, a row per worker, a bar per work item."""

import plotly.colors
import plotly.graph_objects as go

from ..service import COMPARE_RUNS, run_label


def lanes(entries: list[dict]) -> list[int]:
    """A lane per item so that items running at once on one worker (a batched forward) get rows
    of their own instead of hiding each other; one worker running items in turn needs one lane."""
    ends: dict[int, list[float]] = {}
    lane_of = [0] * len(entries)
    for i in sorted(range(len(entries)), key=lambda i: entries[i]["start"]):
        entry, worker_ends = entries[i], ends.setdefault(entries[i]["worker"], [])
        free = next((k for k, end in enumerate(worker_ends) if end <= entry["start"] + 1e-9), len(worker_ends))
        worker_ends[free:free + 1] = [entry["end"]]
        lane_of[i] = free
    return lane_of


def step_label(step) -> str:
    """A bar's label: the step, R for the block's recache, S for a prompt switch's recache."""
    if step == "recache":
        return "R"
    return "S" if str(step).startswith("switch@") else str(step)


def timeline_figure(stats: dict) -> go.Figure:
    """Every run's forwards (serial, cascade and the sequence run where it ran): a row per worker, a bar per work item from start to end, coloured by
    block and labelled with its step (``step_label``); hovering names it. A dashed line marks
    each prompt switch's moment in each run (its first forward under the new prompt)."""
    palette = plotly.colors.qualitative.Plotly
    rows, bars = [], {}
    labels = {name: run_label(name, stats[name].get("workers")) for name in COMPARE_RUNS if name in stats}
    for name in labels:
        entries = stats[name]["timeline"]
        for entry, lane in zip(entries, lanes(entries)):
            row = f"{labels[name]} · worker {entry['worker']}" + (f" ({lane + 1})" if lane else "")
            if row not in rows:
                rows.append(row)
            bars.setdefault(entry["block"], []).append((row, entry, name))
    figure = go.Figure()
    for block in sorted(bars):
        items = bars[block]
        figure.add_bar(
            orientation="h", name=f"block {block}", y=[row for row, _, _ in items],
            x=[e["end"] - e["start"] for _, e, _ in items], base=[e["start"] for _, e, _ in items],
            text=[step_label(e["step"]) for _, e, _ in items], textposition="inside", insidetextanchor="middle",
            marker_color=palette[block % len(palette)],
            customdata=[[labels[run], block, e["step"], e["worker"], e["start"], e["end"]] for _, e, run in items],
            hovertemplate="%{customdata[0]}<br>block %{customdata[1]}, step %{customdata[2]}<br>"
                          "worker %{customdata[3]}<br>%{customdata[4]:.3f} s → %{customdata[5]:.3f} s<extra></extra>")
    figure.update_layout(
        # tall enough for a row per worker and for the legend's entry per block
        barmode="overlay", height=max(120 + 34 * len(rows), 80 + 20 * len(bars)), margin=dict(l=10, r=10, t=30, b=40),
        legend=dict(traceorder="normal"), xaxis_title="seconds since the run started",
        uniformtext=dict(minsize=8, mode="hide"))
    figure.update_yaxes(categoryorder="array", categoryarray=rows, autorange="reversed")
    # each run's labels on a line of their own above the plot, so two close switches stay readable
    for level, name in enumerate(labels):
        for switch in stats[name]["switches"]:
            figure.add_vline(x=switch["at_s"], line_dash="dash", line_color="#b8860b")
            figure.add_annotation(x=switch["at_s"], y=1, yref="paper", yanchor="bottom", xanchor="left",
                                  yshift=2 + 16 * level, showarrow=False, font_size=11,
                                  text=f"{labels[name]}: prompt of block {switch['block']}")
    if figure.layout.shapes:
        figure.update_layout(margin_t=64)
    return figure
