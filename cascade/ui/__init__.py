"""The app's presentation: what the comparison page shows, built from what the Service returns.

One idea per module: ``timeline`` (the plotly figure of both runs' forwards), ``replay`` (the race
replay, its HTML, CSS and JavaScript in files of their own beside it), ``previews`` (thumbnails and
the strips that fill in block by block), ``tables`` (the Markdown and HTML of figures and notes),
``updates`` (a comparison's stream of page updates), ``errors`` (one line per failure) and
``warm_up`` (the shared Service and its warm-up). They talk to ``cascade.service`` only; ``app.py``
lays the page out and wires these to it.
"""
