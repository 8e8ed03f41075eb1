"""Bad input, property-based (issue 15): whatever a visitor types or an API client sends gets one
clear line or a clean result; never a traceback, a hang, a file outside the output root, a model
loaded from a path, or HTML of theirs in the page.

Through the ``Service`` and through the app's HTTP API on the small demo (``demo_support``), and
in a real browser for HTML in a prompt. CI runs hypothesis's ``ci`` profile; the bar (at least
500 generated examples through the API):

    python -m pytest tests/test_bad_input.py --hypothesis-profile=thorough --hypothesis-show-statistics
"""

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from cascade.model.presets import WEIGHTS_ROOT
from cascade.service import FOLDER_NAME, UNLIMITED, GenerateRequest, Limits, Offer, Service
from cascade.ui.errors import user_error
from cascade.ui.tables import quality_markdown, run_table, speedup_markdown, unknown_note
from demo_support import API_DEFAULTS, api_values, call_compare

# Text a visitor may type: empty and blank, 10,000 characters, control and format characters,
# right-to-left, emoji, full-width letters, Markdown, HTML and script, a lone surrogate (JSON
# carries one), paths.
NASTY_TEXT = [
    "", " ", "\t\n \r", "x" * 10_000, "a red circle moving right", "\u200b\u200f\u2060",
    "\x00\x07\x1b[31m\x7f",
    "<script>window.__xss = 1</script>", '<img src=x onerror="window.__xss = 1">',
    "a red <b class='probe'>circle</b> &amp; \"quotes\"", "עיגול אדום a red circle moving right",
    "\u202eright to left override\u202c", "🔴 a red circle ⭕ moving ➡️ 👩‍👩‍👧", "ｒｅｄ ｃｉｒｃｌｅ",
    "**bold** _x_ [link](javascript:alert(1)) `code` # heading\n---", "a\ud800b", "../../etc/passwd",
]
PROMPTS = st.one_of(st.sampled_from(NASTY_TEXT), st.text(min_size=1, max_size=60),  # any unicode at all
                    # the hard cases inside a prompt that has something to show
                    st.builds("{} a red circle {}".format, st.sampled_from(NASTY_TEXT), st.text(max_size=20)))
# Values of the wrong kind or size for any setting: out of range, negative, huge, NaN, infinite,
# text, lists, objects, null.
ODD = st.one_of(st.integers(-3, 40), st.integers(-10**30, 10**30), st.just(10**400),
                st.floats(allow_nan=True, allow_infinity=True), st.none(), st.booleans(), st.text(max_size=12),
                st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
# Model names that are paths: a real folder, relative and absolute, and ways out of one.
PATHS = st.sampled_from(["cascade/weights/tiny-shapes", str(WEIGHTS_ROOT / "tiny-shapes"), "../tiny-shapes",
                         "tiny-shapes/..", "..", "/", "/etc/passwd", "./random-tiny", "tiny-shapes\x00", ""])
SERVICE_LIMITS = Limits(blocks=2, steps=2)
# the page's own tags around what it shows of a run; anything else that looks like a tag came from a visitor
PAGE_TAGS = re.compile(r"</?code>|<p class='unknown-words'>|</p>")


def only_request_folders(root: Path) -> bool:
    """Nothing but the service's own per-request folders under ``root``, and nothing beside it."""
    inside = list(root.iterdir()) if root.exists() else []
    return all(FOLDER_NAME.fullmatch(p.name) and p.is_dir() for p in inside) and \
        all(p == root for p in root.parent.iterdir())


def one_clear_line(message) -> None:
    assert isinstance(message, str) and message.strip(), message  # not Gradio's detail-less error
    assert "\n" not in message and "Traceback" not in message, message


def assert_no_html_of_theirs(shown: str) -> None:
    assert "<" not in PAGE_TAGS.sub("", shown), shown


# --- through the Service --------------------------------------------------------------------------


@st.composite
def service_requests(draw):
    """A request that is mostly small and valid, with some fields replaced by odd values. Pools
    are left out here (each new setting starts one); the API's property drives them."""
    fields = dict(prompt=PROMPTS, mode=st.sampled_from([None, "serial", "cascade"]),
                  model=st.sampled_from([None, "random-tiny", "tiny-shapes"]), blocks=st.integers(1, 2),
                  steps=st.integers(1, 2), window=st.sampled_from([None, 1, 2]), stride=st.sampled_from([None, 1]),
                  recache=st.sampled_from([None, True, False]), joint=st.sampled_from([None, False, True]),
                  executor=st.sampled_from(["local", "batched"]), seed=st.integers(0, 2**63 - 1),
                  threads=st.sampled_from([None, 1]), bwcache=st.booleans(),
                  bwcache_threshold=st.sampled_from([0.0, 0.15, float("inf")]))
    chosen = {name: draw(strategy) for name, strategy in fields.items()}
    odd = {"model": st.one_of(PATHS, ODD), "executor": st.one_of(st.text(max_size=12), ODD),
           "mode": st.one_of(st.text(max_size=12), ODD), "kv_exchange": st.one_of(st.text(max_size=12), ODD),
           "prompt": ODD}
    for name in draw(st.lists(st.sampled_from(sorted({*fields, *odd, "workers"})), max_size=2, unique=True)):
        chosen[name] = draw(odd.get(name, ODD))
    return GenerateRequest(**chosen)


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    with Service(output_root=root / "out", device="cpu", limits=SERVICE_LIMITS) as service:
        yield service


@given(request=service_requests())
# cases found before, or too rare to leave to chance: run every time
@example(request=GenerateRequest(prompt="a\ud800b", model="random-tiny", blocks=1, steps=1))
@example(request=GenerateRequest(prompt="a red circle", model=str(WEIGHTS_ROOT / "tiny-shapes")))
def test_any_request_to_the_service_gets_one_clear_line_or_a_clean_video(bounded, request):
    try:
        result = bounded.generate(request)
    except ValueError as error:
        one_clear_line(str(error))
        event("a clear error")  # hypothesis's statistics count the outcomes
        return
    event("a clean video")
    assert result.frames.dtype == np.uint8 and result.frames.ndim == 4 and len(result.frames) > 0
    folder = result.files["stats.json"].parent
    assert folder.parent == bounded.output_root and all(path.parent == folder for path in result.files.values())
    assert only_request_folders(bounded.output_root)


def test_a_public_service_loads_presets_only_and_a_trusted_caller_loads_paths_too(tmp_path):
    folder = str(WEIGHTS_ROOT / "tiny-shapes")
    with Service(output_root=tmp_path, device="cpu") as public:
        for name in (folder, "cascade/weights/tiny-shapes", "../tiny-shapes"):
            with pytest.raises(ValueError, match=r"^unknown model '.*'; available: tiny-shapes, random-tiny"):
                public.resolve(GenerateRequest(prompt="a red circle", model=name))
    with Service(output_root=tmp_path, device="cpu", limits=UNLIMITED) as trusted:
        assert trusted.resolve(GenerateRequest(prompt="a red circle", model=folder)).model == folder


def test_blocks_and_steps_beyond_the_service_limits_are_refused_before_any_work(bounded):
    before = set(bounded.output_root.iterdir()) if bounded.output_root.exists() else set()
    with pytest.raises(ValueError, match=r"^blocks must be at most 2 on this service, got 3$"):
        bounded.generate(GenerateRequest(prompt="a red circle", model="random-tiny", blocks=3, steps=1))
    # a model's own default counts too: random-tiny samples 4 steps unless told otherwise
    with pytest.raises(ValueError, match=r"^steps must be at most 2 on this service, got 4$"):
        bounded.generate(GenerateRequest(prompt="a red circle", model="random-tiny", blocks=1))
    assert (set(bounded.output_root.iterdir()) if bounded.output_root.exists() else set()) == before


def test_a_page_needs_a_service_with_bounds(tmp_path):
    with Service(output_root=tmp_path, device="cpu", limits=UNLIMITED) as unbounded:
        with pytest.raises(ValueError, match="a public page needs a Service with bounds on blocks and steps"):
            unbounded.offer(unbounded.default_request())


# --- through the app's API --------------------------------------------------------------------------


@st.composite
def api_calls(draw):
    """The compare endpoint's 14 inputs: small valid settings (the page's presets, both backends,
    both variants) with up to three replaced by odd values, paths for the preset among them."""
    fields = dict(preset=st.sampled_from(["tiny-shapes", "random-tiny"]), blocks=st.integers(1, 2),
                  steps=st.integers(1, 2), backend=st.sampled_from(["batched", "pool"]), workers=st.just(2),
                  window=st.integers(1, 2), stride=st.integers(1, 2), variant=st.sampled_from(["causal", "joint"]),
                  recache=st.booleans(), bwcache=st.booleans(), bwcache_threshold=st.sampled_from([0.0, 0.15, 1.0]),
                  seed=st.integers(0, 2**31 - 1))
    chosen = {name: draw(strategy) for name, strategy in fields.items()}
    # odd worker counts leave out 1: a valid count, and each count starts a pool of its own
    odd = {"preset": st.one_of(PATHS, st.sampled_from(["self-forcing-1.3b", "random-wan2.1-1.3b"]), ODD),
           "workers": ODD.filter(lambda value: value != 1)}
    broken = draw(st.sampled_from([0, 0, 1, 2, 3]))  # a good share of calls that should run
    for name in draw(st.lists(st.sampled_from(list(API_DEFAULTS)), min_size=broken, max_size=broken, unique=True)):
        chosen[name] = draw(odd.get(name, ODD))
    prompt = draw(st.one_of(PROMPTS, ODD)) if draw(st.integers(0, 9)) == 0 else draw(PROMPTS)
    return api_values(prompt, **chosen)


@given(values=api_calls())
@example(values=api_values("a red circle", preset="self-forcing-1.3b"))  # its needs span lines
@example(values=api_values("a\ud800b <script>x</script>"))
@example(values=api_values("a red circle", preset=str(WEIGHTS_ROOT / "tiny-shapes")))
@example(values=api_values("a red circle", seed=10**400, bwcache_threshold=float("nan")))
def test_anything_sent_to_the_api_gets_one_clear_line_or_a_clean_comparison(small, capfd, values):
    kind, data = call_compare(small.url, values)
    event(kind)  # hypothesis's statistics count the outcomes: "error" or "complete"
    if kind == "error":
        one_clear_line(data)
        assert "<" not in data  # a toast renders HTML: a quoted value arrives escaped
    else:
        _, _, _, stats = data
        assert stats["serial"]["prompt"] == stats["cascade"]["prompt"] == values[0]
        assert stats["cascade"]["seed"] == values[-3] and stats["cascade"]["blocks"] == values[2]
        for shown in (speedup_markdown(stats), unknown_note(stats["serial"]["unknown_words"]),
                      run_table(stats["serial"]), run_table(stats["cascade"]), quality_markdown(stats)):
            assert_no_html_of_theirs(shown)
    assert only_request_folders(small.service.output_root)
    assert "Traceback" not in "".join(capfd.readouterr())


# --- what the page shows ------------------------------------------------------------------------------


def test_messages_quoting_a_visitor_reach_the_page_escaped_and_cut_short():
    shown = user_error(ValueError("unknown preset '<img src=x onerror=alert(1)>'")).message
    assert shown == "unknown preset '&lt;img src=x onerror=alert(1)&gt;'"
    offer = Offer(defaults=GenerateRequest(prompt="x"), runnable=("tiny-shapes",), unavailable=(),
                  max_workers=2, max_blocks=2, max_steps=2)
    with pytest.raises(ValueError) as raised:
        offer.request(*api_values("a red circle", preset="<b>" + "x" * 5000))
    assert len(str(raised.value)) < 120 and str(raised.value).startswith("unknown preset '<b>xxx")


XSS_PROMPT = ("<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\">"
              "<b class=\"xss-probe\">a red circle</b> moving right")
INJECTED = """() => ({xss: window.__xss === undefined ? null : window.__xss,
                      elements: document.querySelectorAll('.xss-probe, img[src="x"]').length,
                      scripts: [...document.scripts].filter(s => s.textContent.includes('__xss')).length})"""


def test_html_in_a_prompt_is_shown_as_typed_and_never_runs_in_the_browser(small, browser):
    page = browser.new_page()
    page.goto(small.url)
    page.fill("#prompt textarea", XSS_PROMPT)
    page.click("#compare")
    page.wait_for_function("() => document.querySelector('#speedup').innerText.includes('faster')", timeout=90_000)
    page.wait_for_selector("#note .unknown-words", timeout=30_000)
    assert page.evaluate(INJECTED) == {"xss": None, "elements": 0, "scripts": 0}
    assert "<script>window.__xss = 1</script>" in page.inner_text("#speedup")  # shown, as typed
    assert "xss" in page.inner_text("#note") and "script" in page.inner_text("#note")  # the words it did not know
    page.close()
