"""``facediffuser demo``: a Gradio page over the same pipeline, checks and PNG writer as ``facediffuser generate``.

:mod:`.core` runs one request without Gradio (the part the CLI could share, and the part the tests drive directly);
:mod:`.app` lays out the page and owns the server's temporary folder. Gradio is imported only by :mod:`.app`, so this
package imports without the ``demo`` extra.
"""

from .core import Control, DemoRequest, DemoResult, DemoRunner, page_controls, slider_range

__all__ = ["Control", "DemoRequest", "DemoResult", "DemoRunner", "page_controls", "slider_range"]
