"""The Gradio page of ``facediffuser demo``, and the server around it.

:func:`serve` owns one temporary folder for everything the server writes (uploads, example copies, PNGs) and removes
it on :meth:`DemoServer.close`. :func:`build_app` lays out the page over a :class:`~facediffuser.demo.core.DemoRunner`;
the page's numeric controls take their ranges and defaults from the loaded model (the runner's ``controls``: the size
from the model's sample size and VAE scale, the steps and guidance scales from its ``model_index.json``, the rest from
:class:`~facediffuser.settings.SamplingSettings`), and each request becomes a ``SamplingSettings`` again, so the checks
and their words are the command line's. Gradio checks no value itself (:func:`unchecked`): a value outside a
range is refused by the runner, in the page's words.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..fusion import SubjectGuidanceBase
from ..images import IMAGE_EXTENSIONS
from ..io.configuration import name_flags
from ..io.loading import MINI_MODEL, SCHEDULERS
from ..prompting import DEFAULT_PLACEHOLDER
from ..settings import StageBoundaries
from .core import MAX_PEOPLE, REGION_LABELS, Control, DemoRunner, number_text

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
FIRST_PORT = 7860  # Gradio's: with no port given, it takes the first free one from here
MODEL_SCHEDULER = "model's own"
# The mini model's draws are 32 px: the browser shows them enlarged with sharp pixels rather than blurred.
PAGE_CSS = "#images img, #masks img, #regions img { image-rendering: pixelated; }"
# The README's prompt (mini draws its world: six places, three times of day, eight clothing colours).
MINI_PROMPT = "a {noun} {placeholder} in a yellow sweater on a beach at night"

STAGE_LEGEND = (
    "**Who drew what.** One tile per denoising step: white where the subject model (SDM) drew, black where the scene "
    "model (TDM) did. The band above each tile is the stage: "
    "<span style='color:#4287f5'>&#9632;</span> I, scene model only; "
    "<span style='color:#f5a623'>&#9632;</span> II, both, fused by the saliency mask; "
    "<span style='color:#d63031'>&#9632;</span> III, subject model only. "
    "Read left to right, row by row; the last tile is the image with stage II's mean mask in red."
)
REGIONS_LABEL = (
    "Person regions (the scene model's stage-I attention to each person's class noun): the image; each person's "
    "region, white to their colour; who each position belongs to (dark gray: no one); the image tinted by it"
)
# What each region option's checkbox says (docs/method.md, Person regions); all off: the paper's sampling.
REGION_INFO = {
    "region_attention": "In stages II-III each person's fused token in the subject model attends only inside their "
    "region.",
    "region_attention_text": "In stage II each person's class noun in the scene model attends only inside their "
    "region.",
    "region_saliency": "The saliency mask is normalised over each person's region apart, so one person's strong "
    "response does not take the other's pixels.",
}


def page_names(runner: DemoRunner) -> dict[str, str]:
    """How the library's messages name a setting (```alpha```), said on the page with the widget's name, as the
    command line says it with its flag (``configuration.name_flags``)."""
    return {
        **{name: c.label for name, c in runner.controls.items()},
        "subject_guidance_base": "Subject guidance base",
        "stage_boundaries": "Stage boundaries",
        **REGION_LABELS,
    }


def example_photo(name: str = "astronaut.jpg") -> str:
    return str(resources.files("facediffuser") / "data" / "examples" / name)


def mini_people() -> list[tuple[str, list[str]]]:
    """The mini model's shipped example references (``data/examples/mini``, a subject folder), sorted by name: each
    person's class noun and photos; empty when this installation has none."""
    from ..evaluation.benchmarks import load_subjects
    from ..io.package_data import MINI_EXAMPLES, packaged

    try:
        people = load_subjects(packaged(MINI_EXAMPLES))
    except (OSError, ValueError):
        return []
    return [(person.class_noun, [str(photo.path) for photo in person.photos]) for person in people]


def examples(model: str, placeholder: str = DEFAULT_PLACEHOLDER) -> list[list]:
    """Prompts with the photos of each person (empty slots as ``None``), for the page's example table.

    The mini model draws its procedural world (32 px; six places, three times of day, eight clothing colours): its
    examples are prompts of that world with its shipped references of held-out people, one person and two. Any other
    model gets photographic ones with the astronaut photo."""
    p = placeholder
    people = mini_people() if model == MINI_MODEL else []
    women = [photos for noun, photos in people if noun == "woman"]
    men = [photos for noun, photos in people if noun == "man"]
    if len(women) >= 2 and len(men) >= 2:
        rows = [
            (MINI_PROMPT.format(noun="woman", placeholder=p), [women[0]]),
            (f"a man {p} in a red jacket in a forest in the snow", [men[0]]),
            (f"a man {p} in a black shirt and a woman {p} in a white jacket on a city street during the day",
             [men[1], women[1]]),
        ]  # fmt: skip
    else:
        astronaut = example_photo()
        rows = [
            (f"a woman {p} on the moon, photo", [[astronaut]]),
            (f"a painting of a woman {p} in the style of van gogh", [[astronaut]]),
            (f"a woman {p} and a woman {p} having coffee in a cafe", [[astronaut], [astronaut]]),
        ]
    return [[prompt, *people, *[None] * (MAX_PEOPLE - len(people))] for prompt, people in rows]


def unchecked(component):
    """``component`` (a ``Slider``) less Gradio's own check of its value: Gradio refuses a value outside a
    slider's range in its words (``Value 32 is less than minimum value 64.``) and rounds by ``precision``; here the
    value reaches the handler as sent, and the runner checks it in the page's words (``DemoRunner.check_ranges``). (An
    attribute of this one component, not a subclass: Gradio writes a ``.pyi`` file beside the module that defines a
    component class.)"""
    component.preprocess = lambda payload: payload
    return component


def people_from_slots(slots: Sequence[Sequence[str] | str | None]) -> list[list[str]]:
    """The photos of each person from the page's slots, filled from the left; a gap is an error."""
    people = [[s] if isinstance(s, str) else list(s or []) for s in slots]
    last = max((k for k, photos in enumerate(people) if photos), default=-1)
    for k in range(last):
        if not people[k]:
            raise ValueError(
                f"Person {k + 1} has no photo but person {last + 1} has: fill the person slots from the left, one "
                "per placeholder, in the prompt's order."
            )
    return people[: last + 1]


def make_handler(runner: DemoRunner):
    """The page's generate function: the widgets' values in, ``(images, masks, regions, PNG files, seed used)`` out;
    ``regions`` is an update of the regions gallery: its pictures, shown only when the run has them.

    A request error becomes a ``gr.Error`` carrying the check's own sentence; anything else is logged with its
    traceback on the server and shown on the page as one line.
    """
    import gradio as gr
    from gradio.utils import get_upload_folder

    # An upload lives at <upload folder>/<hash>/<its name>: messages name the file as the user knows it.
    upload_prefix = re.compile(re.escape(str(Path(get_upload_folder()))) + r"/[^/\s]+/")

    names = page_names(runner)

    def generate(prompt, negative_prompt, steps, alpha, beta, guidance, subject_guidance, base, scheduler, seed,
                 count, h, w, region_attention, region_attention_text, region_saliency, stage_boundaries, *slots,
                 progress=gr.Progress()):  # fmt: skip
        try:
            request = runner.page_request(
                prompt=prompt,
                people=people_from_slots(slots),
                negative_prompt=negative_prompt,
                seed=seed,
                scheduler=None if scheduler == MODEL_SCHEDULER else scheduler,
                subject_guidance_base=base,
                region_attention=region_attention,
                region_attention_text=region_attention_text,
                region_saliency=region_saliency,
                stage_boundaries=stage_boundaries,
                num_inference_steps=steps,
                alpha=alpha,
                beta=beta,
                guidance_scale=guidance,
                subject_guidance_scale=subject_guidance,
                num_images=count,
                height=h,
                width=w,
            )
            progress(0, desc="Waiting for the model")
            result = runner.run(request, on_step=lambda i, n: progress((i, n), desc="Denoising", unit="steps"))
        except (ValueError, FileNotFoundError) as err:
            message = name_flags(upload_prefix.sub("", str(err)), names)
            raise gr.Error(message, print_exception=False) from None
        except Exception as err:
            logger.exception("A demo run failed.")
            raise gr.Error(
                f"The run failed ({type(err).__name__}); the server's log has the details.", print_exception=False
            ) from None
        images = [(str(p), f"image {i + 1}, seed {result.seed}") for i, p in enumerate(result.images)]
        masks = [str(p) for p in result.masks]  # no caption: it would cover the last tile
        regions = gr.update(value=[str(p) for p in result.regions] or None, visible=bool(result.regions))
        return images, masks, regions, [str(p) for p in result.images], str(result.seed)

    return generate


def model_note(model: str) -> str:
    from ..io.loading import MINI_MODEL, TINY_MODEL

    if model == TINY_MODEL:
        return "**Model: `tiny`**, random weights: it draws noise. Start the demo with `--model` for real weights."
    if model == MINI_MODEL:
        return (
            "**Model: `mini`**, the small model shipped in the package: trained on the project's procedural world, "
            "it draws 32 px images of that world's people (example references: `facediffuser/data/examples/mini`)."
        )
    return f"**Model:** `{model}`"


def build_app(runner: DemoRunner):
    """The page: prompt, examples, person slots, settings, and the images with their mask strips."""
    import gradio as gr

    placeholder = runner.placeholder
    controls = runner.controls

    def slider(name: str, label: str, elem_id: str):
        c: Control = controls[name]
        return unchecked(gr.Slider(c.minimum, c.maximum, value=c.default, step=c.step, label=label, elem_id=elem_id))

    own_subject = controls["subject_guidance_scale"].default
    subject_label = (
        "Subject guidance scale w of the SDM (empty: the same as w)"
        if own_subject is None
        else f"Subject guidance scale w of the SDM (this model's own: {number_text(own_subject)}; empty: the same as w)"
    )
    example_prompt = (
        MINI_PROMPT.format(noun="woman", placeholder=placeholder)
        if runner.model == MINI_MODEL
        else f"a woman {placeholder} on the moon"
    )
    generate = make_handler(runner)

    with gr.Blocks(title="Face-diffuser", analytics_enabled=False) as app:
        gr.Markdown(
            "# Face-diffuser\nPeople from your photos, in the scene your prompt describes. Two models work together: "
            "the scene model draws the scene, the subject model draws the people, and a saliency mask decides, step "
            "by step and pixel by pixel, whose prediction is used.\n\n" + model_note(runner.model)
        )
        with gr.Row():
            with gr.Column(scale=5):
                prompt = gr.Textbox(
                    label="Prompt",
                    lines=2,
                    placeholder=example_prompt,
                    info=f"Put {placeholder} right after each person's class noun ('a man {placeholder}', "
                    f"'a woman {placeholder}'), once per person, in the same order as the person slots below.",
                    elem_id="prompt",
                )
                slots = []
                for row in range(MAX_PEOPLE // 2):
                    with gr.Row():
                        for k in (2 * row, 2 * row + 1):
                            slots.append(
                                gr.File(
                                    label=f"Person {k + 1}: one or more photos",
                                    file_count="multiple",
                                    file_types=list(IMAGE_EXTENSIONS),
                                    height=170,
                                    elem_id=f"person-{k + 1}",
                                )
                            )
                gr.Examples(
                    examples(runner.model, placeholder), inputs=[prompt, *slots], label="Examples (click to fill)"
                )
                negative_prompt = gr.Textbox(label="Negative prompt", placeholder="what to avoid", elem_id="negative")
                with gr.Row():
                    steps = slider("num_inference_steps", "Steps T", "steps")
                    guidance = slider("guidance_scale", "Guidance scale w", "guidance")
                with gr.Row():
                    alpha = slider("alpha", "alpha: stage I (scene model only) ends at alpha*T", "alpha")
                    beta = slider("beta", "beta: stage III (subject model only) starts at beta*T", "beta")
                with gr.Row():
                    count = slider("num_images", "Images", "count")
                    seed = gr.Textbox(label="Seed", placeholder="empty: a random seed", elem_id="seed")
                with gr.Accordion("More settings", open=False):
                    subject_guidance = gr.Textbox(  # a number box cannot be empty: it shows and sends 0
                        value="" if own_subject is None else number_text(own_subject),
                        label=subject_label,
                        placeholder="empty: the same as w",
                        elem_id="subject-guidance",
                    )
                    base = gr.Radio(
                        [m.value for m in SubjectGuidanceBase],
                        value=SubjectGuidanceBase.TEXT.value,
                        label="Subject guidance base: 'text' as the official release, 'null' as paper eq. 2",
                    )
                    scheduler = gr.Dropdown(
                        [MODEL_SCHEDULER, *SCHEDULERS],
                        value=MODEL_SCHEDULER,
                        label=f"Scheduler (the model's own: {runner.scheduler_name})",
                    )
                    with gr.Row():
                        h = slider("height", "Height (px)", "height")
                        w = slider("width", "Width (px)", "width")
                    region_options = [
                        gr.Checkbox(False, label=label, info=REGION_INFO[name], elem_id=name.replace("_", "-"))
                        for name, label in REGION_LABELS.items()
                    ]  # off: the paper's sampling
                    stage_boundaries = gr.Radio(
                        [m.value for m in StageBoundaries],
                        value=StageBoundaries.STEPS.value,
                        label="Stage boundaries: alpha and beta measure 'steps', fractions of the steps (the "
                        "paper's rule), or 'noise', noise levels (stage I while the timestep t >= (1 - alpha) * 1000), "
                        "the same at any sampler and number of steps",
                        elem_id="stage-boundaries",
                    )
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=4):
                gallery = gr.Gallery(
                    label="Images",
                    show_label=False,
                    columns=2,
                    height=340,
                    object_fit="contain",
                    fit_columns=False,
                    elem_id="images",
                )
                gr.Markdown(STAGE_LEGEND)
                masks = gr.Gallery(
                    label="Fusion masks over the steps",
                    show_label=False,
                    columns=2,
                    height=340,
                    object_fit="contain",
                    fit_columns=False,
                    elem_id="masks",
                )
                regions = gr.Gallery(
                    label=REGIONS_LABEL,
                    columns=1,
                    height="auto",
                    object_fit="contain",
                    visible=False,  # shown when a run has person regions: two or more people, or a region option
                    elem_id="regions",
                )
                downloads = gr.File(label="PNG files (with their settings inside)", elem_id="downloads")
                seed_used = gr.Textbox(label="Seed used", interactive=False, elem_id="seed-used")
        settings_widgets = [prompt, negative_prompt, steps, alpha, beta, guidance, subject_guidance, base, scheduler]
        settings_widgets += [seed, count, h, w, *region_options, stage_boundaries]
        run.click(
            generate,
            inputs=[*settings_widgets, *slots],
            outputs=[gallery, masks, regions, downloads, seed_used],
            api_name="generate",
        )
    return app


def require_gradio() -> None:
    """Raises ``ValueError`` with the install command when Gradio (the ``demo`` extra) is missing."""
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f'The demo needs Gradio, which is not installed ({err}). Install it with: pip install "facediffuser[demo]"'
        ) from err


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass
class DemoServer:
    """A running demo: its URL, its runner, and the temporary folder it removes on :meth:`close`."""

    app: object
    url: str
    runner: DemoRunner
    tmpdir: Path
    _saved_env: dict[str, str | None] = field(default_factory=dict)

    def close(self) -> None:
        try:
            self.app.close(verbose=False)
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            _restore_env(self._saved_env)
            logger.info("Removed %s.", self.tmpdir)

    def __enter__(self) -> DemoServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(
    pipe_factory,
    *,
    model: str,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    share: bool = False,
    concurrency: int = 1,
    max_queue: int = 16,
    max_upload_mb: float = 10,
    face_check: bool = True,
    recorded: dict | None = None,
) -> DemoServer:
    """Starts the demo without blocking and returns it; ``pipe_factory()`` loads the pipeline once, here.

    Everything the server writes goes under one new temporary folder: Gradio's uploads and copies
    (``GRADIO_TEMP_DIR``), its example cache (``GRADIO_EXAMPLES_CACHE``) and the PNGs. Gradio reads those variables
    when the page is built, so they are set before, and restored by :meth:`DemoServer.close`.
    """
    tmpdir = Path(tempfile.mkdtemp(prefix="facediffuser-demo-"))
    env = {
        "GRADIO_TEMP_DIR": str(tmpdir / "gradio"),
        "GRADIO_EXAMPLES_CACHE": str(tmpdir / "examples"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "MPLCONFIGDIR": str(tmpdir / "matplotlib"),  # Gradio imports matplotlib, which writes a font cache
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    server = None
    try:
        runner = DemoRunner(
            pipe_factory(),
            tmpdir / "outputs",
            model=model,
            concurrency=concurrency,
            face_check=face_check,
            recorded=recorded,
        )
        app = build_app(runner)
        app.queue(default_concurrency_limit=concurrency, max_size=max_queue)
        server = DemoServer(app=app, url="", runner=runner, tmpdir=tmpdir, _saved_env=saved)
        try:
            _, url, _ = app.launch(
                server_name=host,
                server_port=port,
                share=share,
                prevent_thread_lock=True,
                max_file_size=int(max_upload_mb * 1024 * 1024),
                show_error=False,
                quiet=True,
                ssr_mode=False,
                css=PAGE_CSS,
                footer_links=["api"],
            )
        except OSError as err:  # Gradio's "Cannot find empty port": a busy port, or a host this machine is not
            where = f"port {port}" if port is not None else f"any port from {FIRST_PORT}"
            raise ValueError(
                f"Cannot listen on {host}, {where}: {err}. Choose another --port (or leave it out), or a --host "
                "address of this machine."
            ) from err
        server.url = url
        return server
    except BaseException:
        if server is not None:
            server.close()
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)
            _restore_env(saved)
        raise
