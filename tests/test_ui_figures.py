"""What the page draws from a comparison's stats (``cascade.ui``): the timeline, the notes and
the escaping of what a visitor typed. Pure formatting: no Service, no page."""

from cascade.service import GenerateRequest, Offer
from cascade.ui.tables import escape_markdown, presets_note, unknown_note
from cascade.ui.timeline import timeline_figure


def test_timeline_gives_a_row_per_worker_and_a_lane_per_batched_item():
    def run(entries):
        return {"timeline": [dict(zip(("block", "step", "worker", "start", "end"), e)) for e in entries], "switches": []}

    stats = {"serial": run([(0, 0, 0, 0.0, 0.1), (0, "recache", 0, 0.1, 0.2), (1, 0, 0, 0.2, 0.3)]),
             "cascade": run([(0, 0, 0, 0.0, 0.1), (1, 0, 1, 0.05, 0.15), (2, 0, 1, 0.05, 0.15)])}
    figure = timeline_figure(stats)
    rows = list(figure.layout.yaxis.categoryarray)
    assert rows == ["Serial (block-causal) · worker 0", "Block Cascading · worker 0",
                    "Block Cascading · worker 1", "Block Cascading · worker 1 (2)"]
    by_block = {trace.name: trace for trace in figure.data}
    assert list(by_block["block 0"].text) == ["0", "R", "0"]
    assert list(by_block["block 0"].base) == [0.0, 0.1, 0.0]
    assert list(by_block["block 2"].y) == ["Block Cascading · worker 1 (2)"]


def test_presets_that_cannot_run_here_are_listed_with_what_they_need():
    defaults = GenerateRequest(prompt="a red circle moving right", mode="cascade", model="tiny-shapes", blocks=8,
                               steps=4, window=4, stride=2, recache=True, joint=False, executor="distributed",
                               workers=2, threads=1)
    offer = Offer(defaults=defaults, runnable=("tiny-shapes",), max_workers=2, max_blocks=16, max_steps=32,
                  unavailable=(("self-forcing-1.3b", "a CUDA GPU and the Wan2.1 checkpoints"),))
    note = presets_note(offer)
    assert "**self-forcing-1.3b** (needs a CUDA GPU and the Wan2.1 checkpoints)" in note
    assert "a worker pool of 2 workers, 1 thread each, 8 blocks × 4 steps" in note


def test_user_text_is_shown_escaped():
    assert "&lt;script&gt;" in unknown_note(["<script>"])
    assert unknown_note([]) == ""
    assert escape_markdown("<b>*x*</b>") == "&lt;b&gt;\\*x\\*&lt;/b&gt;"
