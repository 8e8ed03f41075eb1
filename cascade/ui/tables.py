"""The figures and notes around the videos, as Markdown (or HTML): each run's table, the speedup
line, the quality, the presets note and the unknown words. Anything a visitor typed is escaped."""

import html
import re

from ..service import RUN_LABELS, Offer


def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def run_table(stats: dict) -> str:
    """The figures under each video."""
    cache = stats["bwcache"]
    reuse = f"{percent(cache['reuse_rate'])} (δ {cache['threshold']:g})" if cache["enabled"] else "off"
    threads = stats["threads"]
    rows = [("latency", f"{stats['latency_s']:.2f} s"), ("FPS", f"{stats['fps']:.1f}"),
            ("time to first block", f"{stats['time_to_first_block_s']:.2f} s"),
            ("forwards", f"{stats['forwards']}"), ("ticks", f"{stats['ticks']}"), ("cache reuse", reuse),
            ("backend", f"{stats['executor']}, {stats['workers']} worker{'s' if stats['workers'] != 1 else ''}"
                        + (f" × {threads} thread{'s' if threads != 1 else ''}" if threads else ""))]
    rows += [(f"switch at block {switch['block']}",
              f"{switch['latency_s']:.2f} s between blocks, {switch['forwards']} extra forwards")
             for switch in stats["switches"]]
    return "| figure | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)


def escape_markdown(text: str) -> str:
    """User text shown as typed inside Markdown: HTML escaped, Markdown's punctuation backslashed."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~>])", r"\\\1", html.escape(text))


def speedup_markdown(stats: dict) -> str:
    """The measured speedup beside the bound of the plan that ran, the plan and why, what the
    bound assumes, and how the speedup is counted."""
    serial, cascade, plan = stats["serial"], stats["cascade"], stats["plan"]
    return (f"## {stats['speedup']:.2f}× faster (at most {stats['ideal_speedup']:.2f}× with this plan here)\n"
            f"**{plan['summary']}.** Why this plan: {plan['reason']}.\n\n"
            f"“{escape_markdown(serial['prompt'])}”, seed {serial['seed']}, {serial['model']}, "
            f"{serial['blocks']} blocks × {serial['steps']} steps. "
            f"Measured: serial {serial['latency_s']:.2f} s ÷ cascade {cascade['latency_s']:.2f} s. "
            f"{plan['assumes'][0].upper()}{plan['assumes'][1:]}; the tick ratio, {serial['ticks']} ÷ {cascade['ticks']} "
            f"ticks = {stats['tick_ratio']:.2f}×, is what one worker per block in flight would reach. "
            f"Counted as {stats['counted_as']}." + sequence_line(stats))


def sequence_line(stats: dict) -> str:
    """The third run's speedup beside its own bounds (with free and with its measured
    communication) and its communication's share of its latency, when the comparison made it."""
    if "sequence" not in stats:
        return ""
    plan, sequence = stats["sequence_plan"], stats["sequence"]
    share = sequence["communication_s"] / sequence["latency_s"]
    return (f"\n\n**Sequence parallel: {stats['sequence_speedup']:.2f}× faster than serial** (at most "
            f"{plan['bound']:.2f}×: {plan['summary']}; at most {plan['bound_with_communication']:.2f}× with the "
            f"{plan['mean_communication_s']:.2f} s a worker spent exchanging tokens on average; the busiest "
            f"{sequence['communication_s']:.2f} s, {percent(share)} of its latency); {sequence['latency_s']:.2f} s. "
            f"{plan['assumes'][0].upper()}{plan['assumes'][1:]}; {plan['assumes_with_communication']}.")


ANALYZER_ROWS = (("colour", "colour"), ("shape", "shape"), ("motion", "motion"), ("background", "background"),
                 ("one_object", "exactly one object"))


def quality_markdown(stats: dict) -> str:
    """PSNR and SSIM of the cascade against serial, and the analyzer's verdicts where it judges:
    on the whole video, or with prompt switches on each prompt's stretch of it."""
    figures = stats["quality"]
    psnr = figures["psnr_db"]
    psnr_text = "identical frames" if psnr == "inf" else f"PSNR {psnr:.1f} dB"
    lines = [f"**Quality, cascade vs serial:** {psnr_text}, SSIM {figures['ssim']:.3f}."]
    verdicts = figures.get("analyzer")
    if verdicts:
        lines += analyzer_table("analyzer (share of frames as the prompt asks)", [("", verdicts["serial"],
                                                                                 verdicts["cascade"])])
    segments = figures.get("analyzer_segments")
    if segments:
        lines += analyzer_table("analyzer per prompt (the block after a switch left out)", [
            (f"blocks {s['blocks'][0]}–{s['blocks'][1] - 1}, “{escape_markdown(s['prompt'])}”: ", s, c)
            for s, c in zip(segments["serial"], segments["cascade"])])
    return "\n".join(lines)


def analyzer_table(title: str, verdicts: list[tuple[str, dict, dict]]) -> list[str]:
    """Markdown lines: a row per score of each (row prefix, serial verdict, cascade verdict)."""
    lines = ["", f"| {title} | {RUN_LABELS['serial']} | {RUN_LABELS['cascade']} |", "|---|---|---|"]
    for prefix, serial, cascade in verdicts:
        lines += [f"| {prefix}{label} | {percent(serial[key])} | {percent(cascade[key])} |"
                  for key, label in ANALYZER_ROWS if serial.get(key) is not None or cascade.get(key) is not None]
        if "flicker" in serial:
            lines.append(f"| {prefix}flicker (lower is steadier) | {serial['flicker']:.4f} | {cascade['flicker']:.4f} |")
    return lines


def unknown_note(words: list[str]) -> str:
    """A visible note of the prompt's words the model does not know (escaped: a prompt may hold HTML)."""
    if not words:
        return ""
    listed = ", ".join(f"<code>{html.escape(word)}</code>" for word in dict.fromkeys(words))
    return f"<p class='unknown-words'>The model does not know these words, so they had no effect: {listed}</p>"


def presets_note(offer: Offer) -> str:
    """The defaults and why, and the presets that cannot run here with what they need."""
    d = offer.defaults
    backend = (f"a worker pool of {d.workers} workers" + (f", {d.threads} thread each" if d.threads == 1 else "")
               if d.executor == "distributed" else "one device, batched")
    lines = [f"The defaults are what runs best on this machine: {backend}, {d.blocks} blocks × {d.steps} steps; "
             f"planned for them: window {d.window}, stride {d.stride} (with the box above ticked, window, stride, "
             "variant and recache are planned anew for the backend and steps you choose)."]
    if offer.unavailable:
        lines.append("Presets that cannot run here: " + "; ".join(
            f"**{html.escape(name)}** (needs {html.escape(needs)})" for name, needs in offer.unavailable) + ".")
    return "\n\n".join(lines)
