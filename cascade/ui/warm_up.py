"""The backend every visitor shares: one Service, warmed up once, and a comparison's events as
they come (progress, each block's frames, the result) for a page to show."""

import queue
import threading

from ..service import FORM_BACKENDS, GenerateRequest, Offer, Service


class Backend:
    """The Service and its warm-up. Every comparison waits for the warm-up, so the first visitor
    is timed like the hundredth. ``background``: warm up while Gradio starts and serves (the
    page is up sooner, but the two compete for the cores); else before (the constructor returns
    once the backend is warm)."""

    def __init__(self, service: Service, offer: Offer, background: bool = True):
        self.service = service
        self.offer = offer
        self._ready = threading.Event()
        self._failure: Exception | None = None
        if background:
            threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()
        else:
            self._warm_up()

    def offered_executors(self) -> tuple[str, ...]:
        """The executors warmed up beside the defaults' own: on a GPU every backend the page offers
        (each one's first CUDA kernels would otherwise be a visitor's); on a CPU none, since a
        one-device run there has nothing to compile and warming it would only delay the page."""
        return tuple(FORM_BACKENDS.values()) if self.service.device == "cuda" else ()

    def _warm_up(self) -> None:
        try:
            self.service.warm_up(self.offer.defaults, executors=self.offered_executors())
        except Exception as error:  # reported to every request instead of a dead page
            self._failure = error
        finally:
            self._ready.set()

    def wait_until_ready(self) -> None:
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError(f"the backend did not start: {self._failure}")

    def compare_events(self, request: GenerateRequest):
        """Runs the comparison in its own thread and yields, as they come, lists of events:
        ("progress", fraction, message), ("block", run, index, frames, t) and at last
        ("done", result). Events that arrived together come as one list (one page update)."""
        events = queue.SimpleQueue()

        def work():
            try:
                result = self.service.compare(
                    request, progress=lambda f, message: events.put(("progress", f, message)),
                    on_block=lambda run, block, frames, t: events.put(("block", run, block, frames, t)))
                events.put(("done", result))
            except Exception as error:  # raised again in the page's thread, where Gradio reports it
                events.put(("error", error))

        threading.Thread(target=work, name="compare", daemon=True).start()
        while True:
            batch = [events.get()]
            while not events.empty():
                batch.append(events.get())
            for event in batch:
                if event[0] == "error":
                    raise event[1]
            yield batch
            if batch[-1][0] == "done":
                return
