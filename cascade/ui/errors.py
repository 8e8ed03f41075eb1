"""What a visitor is shown when a comparison cannot run: one line, on the page and through the API."""

import html
import logging

import gradio as gr

from ..service import first_line


def user_error(error: Exception) -> gr.Error:
    """One clear line for the page and the API: bad input as it is (the Service's checks raise
    ValueError), a backend failure named as one, by its first line (the whole of it, a worker's
    traceback too, goes to the server's log). Escaped: toasts render HTML, and a message may
    quote what a visitor sent."""
    if isinstance(error, ValueError):
        text = str(error)
    else:
        logging.getLogger(__name__).error("a comparison failed: %s", error, exc_info=error)
        text = f"The backend failed: {first_line(error)}"
    return gr.Error(html.escape(text, quote=False), print_exception=False)
