"""The demo page in a real headless browser: Debian's ``chromium`` driven by Playwright, against a local server.

Needs the ``demo`` extra, Playwright (``pip install playwright``) and Chromium at ``/usr/bin/chromium`` (``apt-get
install chromium``; another path via ``FACEDIFFUSER_CHROMIUM``). Where one is missing the tests are skipped with the
reason, or fail when ``FACEDIFFUSER_REQUIRE_BROWSER=1`` (CI sets it: there, a missing browser is a broken setup).

Two servers: the random ``tiny`` model served in this process (fast: the page's wiring and its messages), and the
default model as a user starts it, ``facediffuser demo`` with no flags (``mini``, 32 px), in its own process.

Screenshots of the default model's page at rest, after a generation of the README's prompt and with an error are
always taken; with ``FACEDIFFUSER_DEMO_SCREENSHOTS=DIR`` they are written to ``DIR`` (the README's come from
``FACEDIFFUSER_DEMO_SCREENSHOTS=docs``), else to a temp folder. The ``tiny`` tests' screenshots go to a temp folder.
"""

import os
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from facediffuser.io.outputs import read_parameters
from facediffuser.io.tiny import build_tiny_pipeline

pytestmark = pytest.mark.slow  # a browser and a demo server per module: minutes in all

ASTRONAUT = str(resources.files("facediffuser") / "data" / "examples" / "astronaut.jpg")
CHROMIUM = os.environ.get("FACEDIFFUSER_CHROMIUM", "/usr/bin/chromium")
PROMPT = "a woman <|image|> on the moon"
MINI_EXAMPLES = Path(str(resources.files("facediffuser") / "data" / "examples" / "mini"))
README_PROMPT = "a woman <|image|> in a yellow sweater on a beach at night"
ID0006 = [str(MINI_EXAMPLES / "id0006" / f"{k}.png") for k in (1, 2, 3)]  # the README's person, three renders
SRC = str(Path(__file__).resolve().parents[1] / "src")
# One generation of 8 tiny steps takes about a second, 50 mini steps at 32 px about 4; the rest is a busy shared
# machine.
TIMEOUT_MS = 120_000


def unavailable(reason: str):
    if os.environ.get("FACEDIFFUSER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (FACEDIFFUSER_REQUIRE_BROWSER=1: this machine must run the browser tests)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed: pip install playwright")
    if not Path(CHROMIUM).is_file():
        unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set FACEDIFFUSER_CHROMIUM)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        except Exception as err:  # a browser that does not start is reported, not hidden
            unavailable(f"Chromium at {CHROMIUM} did not start: {err}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server():
    try:
        import gradio  # noqa: F401
    except ImportError:
        unavailable("the demo extra (gradio) is not installed: pip install -e '.[demo]'")
    from facediffuser.demo.app import serve

    demo = serve(lambda: build_tiny_pipeline(seed=0), model="tiny", port=None)
    yield demo
    demo.close()
    assert not demo.tmpdir.exists(), "the server's temporary folder is removed on exit"


@pytest.fixture(scope="module")
def mini_server(tmp_path_factory):
    """``facediffuser demo`` as a user starts it: no flags (the default model, mini; face check on; the first free
    port from 7860), in a folder and home of its own; yields its URL."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        unavailable("the demo extra (gradio) is not installed: pip install -e '.[demo]'")
    root = tmp_path_factory.mktemp("mini-demo")
    home, cwd = root / "home", root / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "PYTHONPATH": SRC}
    env |= {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "facediffuser.cli.main", "demo"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any("serving http" in line for line in lines):
            assert server.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        yield next(line for line in lines if "serving http" in line).split("serving ")[1].split()[0]
    finally:
        server.terminate()
        server.wait(timeout=60)
        reader.join(timeout=10)
    log = "".join(lines)
    assert server.returncode == 0, log
    assert "Traceback" not in log and "gradio.exceptions" not in log, log
    assert not list(cwd.iterdir()), "nothing is written to the working directory"


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 1100}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#generate")
    return page


@pytest.fixture
def page(browser, server):
    page = open_page(browser, server.url)
    yield page
    page.close()


@pytest.fixture
def mini_page(browser, mini_server):
    page = open_page(browser, mini_server)
    yield page
    page.close()


def screenshot(page, name: str, tmp_path: Path, full_page: bool = True, readme: bool = False) -> Path:
    """Saves a screenshot: with ``readme`` (the default model's), where ``FACEDIFFUSER_DEMO_SCREENSHOTS`` says."""
    folder = Path((readme and os.environ.get("FACEDIFFUSER_DEMO_SCREENSHOTS")) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=full_page)
    assert Image.open(path).size[0] >= 1000
    return path


def set_number(page, elem_id: str, value) -> None:
    """Types into a slider's number box and leaves it, as a person would."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def upload(page, slot: int, *paths: str) -> None:
    page.set_input_files(f"#person-{slot} input[type=file]", list(paths))
    for path in paths:  # the upload finished when the slot lists the file (its stem and suffix apart: "1", ".png")
        page.locator(f"#person-{slot}").get_by_text(Path(path).stem, exact=True).first.wait_for()


def error_text(page) -> str:
    toast = page.locator(".toast-body").first
    toast.wait_for()
    return toast.inner_text()


def test_generate_in_the_browser(page, server, tmp_path):
    screenshot(page, "demo-at-rest.png", tmp_path)
    page.fill("#prompt textarea", PROMPT)
    upload(page, 1, ASTRONAUT)
    set_number(page, "steps", 8)
    page.click("#generate")

    page.locator("#images img").first.wait_for()
    page.locator("#masks img").first.wait_for()
    seed = page.locator("#seed-used textarea").input_value()
    assert seed.isdigit(), "an empty seed box draws a seed and shows it"
    for elem_id in ("images", "masks"):  # both pictures really loaded in the browser
        width = page.locator(f"#{elem_id} img").first.evaluate("img => img.complete && img.naturalWidth")
        assert width > 0, elem_id
    assert "Traceback" not in page.content()
    screenshot(page, "demo-after-generation.png", tmp_path)

    with page.expect_download() as download:
        page.locator("#downloads a").first.click()
    png = tmp_path / "downloaded.png"
    download.value.save_as(png)
    parameters = read_parameters(png)
    assert parameters["prompt"] == PROMPT and parameters["seed"] == int(seed)
    assert parameters["num_inference_steps"] == 8 and parameters["ref"] == ["astronaut.jpg"]
    assert parameters["model"] == "tiny" and parameters["scheduler"] == "ddim"
    assert Image.open(png).size == server.runner.default_size[::-1]


def test_a_bad_upload_shows_a_readable_error(page, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("These are notes, not a photo.")
    page.fill("#prompt textarea", "a man <|image|> at sea")
    upload(page, 1, str(notes))
    page.click("#generate")
    text = error_text(page)
    assert "notes.png cannot be read as an image" in text, text
    assert "Traceback" not in page.content() and str(tmp_path) not in text  # the file by its name, not a path
    page.wait_for_timeout(800)  # the message slides in
    screenshot(page, "demo-error.png", tmp_path, full_page=False)  # it floats over the visible part


def test_a_placeholder_mismatch_shows_a_readable_error(page):
    page.fill("#prompt textarea", "a man <|image|> and a woman <|image|> at a cafe")
    upload(page, 1, ASTRONAUT)
    page.click("#generate")
    text = error_text(page)
    assert "The prompt has 2 placeholder(s) '<|image|>' but 1 person slot were given" in text, text


def test_alpha_above_beta_shows_the_settings_words(page):
    page.fill("#prompt textarea", PROMPT)
    upload(page, 1, ASTRONAUT)
    set_number(page, "alpha", 0.9)
    set_number(page, "beta", 0.2)
    page.click("#generate")
    text = error_text(page)
    assert "alpha (0.9) must not exceed beta (0.2)" in text, text


def test_an_example_fills_the_prompt_and_the_person_slot(page):
    from playwright.sync_api import expect

    page.get_by_text("on the moon, photo").first.click()
    expect(page.locator("#prompt textarea")).to_have_value("a woman <|image|> on the moon, photo")
    page.locator("#person-1").get_by_text("astronaut").first.wait_for()


def test_an_upload_over_the_size_cap_is_refused_on_the_page(page, server, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(int(10.5 * 2**20)))  # over the default 10 MB cap (--max-upload-mb)
    page.set_input_files("#person-1 input[type=file]", str(big))
    text = error_text(page)
    assert 'exceed the maximum allowed size of 10.0 Mb: "big.png"' in text, text  # Gradio's check, before ours
    assert not list(Path(server.tmpdir).rglob("big.png")), "the refused upload was not kept"


# ---------------------------------------------------------------------------------- the default model, as started
def test_the_readmes_prompt_on_the_default_model(mini_page, tmp_path):
    """``facediffuser demo``, the README's prompt, the three renders of id0006 in person 1, Generate: a 32 px image
    and its masks (the size sliders start at mini's 32 px and Gradio passes them on)."""
    from playwright.sync_api import expect

    page = mini_page
    page.get_by_text("More settings").first.click()  # open: the picture shows the sizes and the model's scheduler
    for elem_id in ("height", "width"):
        expect(page.locator(f"#{elem_id} input[type=number]")).to_have_value("32")
    screenshot(page, "demo-at-rest.png", tmp_path, readme=True)
    page.fill("#prompt textarea", README_PROMPT)
    upload(page, 1, *ID0006)
    page.click("#generate")

    page.locator("#images img").first.wait_for()
    page.locator("#masks img").first.wait_for()
    seed = page.locator("#seed-used textarea").input_value()
    assert seed.isdigit(), "an empty seed box draws a seed and shows it"
    image_width = page.locator("#images img").first.evaluate("img => img.complete && img.naturalWidth")
    masks_width = page.locator("#masks img").first.evaluate("img => img.complete && img.naturalWidth")
    assert image_width == 32 and masks_width > 32, (image_width, masks_width)  # the strip: 10 step tiles and the image
    assert page.locator(".toast-body").count() == 0 and "Traceback" not in page.content()
    page.locator("#images img").first.scroll_into_view_if_needed()
    screenshot(page, "demo-after-generation.png", tmp_path, readme=True)

    with page.expect_download() as download:
        page.locator("#downloads a").first.click()
    png = tmp_path / "downloaded.png"
    download.value.save_as(png)
    parameters = read_parameters(png)
    assert parameters["prompt"] == README_PROMPT and parameters["seed"] == int(seed)
    assert parameters["model"] == "mini" and parameters["ref"] == ["1.png + 2.png + 3.png"]
    # the Steps slider starts at the model's own number (mini's model_index.json: 10)
    assert parameters["num_inference_steps"] == 10 and (parameters["height"], parameters["width"]) == (32, 32)
    assert Image.open(png).size == (32, 32)


def test_the_two_person_example_fills_both_people_and_draws(mini_page):
    from playwright.sync_api import expect

    page = mini_page
    page.get_by_text("a man <|image|> in a black shirt").first.click()  # the table cuts the prompt short
    expect(page.locator("#prompt textarea")).to_have_value(
        "a man <|image|> in a black shirt and a woman <|image|> in a white jacket on a city street during the day"
    )
    for slot in (1, 2):  # three renders of one shipped person each
        expect(page.locator(f"#person-{slot}").get_by_text(".png", exact=True)).to_have_count(3)
    set_number(page, "steps", 20)
    page.click("#generate")
    page.locator("#images img").first.wait_for()
    page.locator("#masks img").first.wait_for()
    page.locator("#regions img").first.wait_for()  # two people: their regions below the mask strip
    width = page.locator("#regions img").first.evaluate("img => img.complete && img.naturalWidth")
    assert width > 4 * 32, width  # the image, two people, the assignment, the tinted image
    assert page.locator(".toast-body").count() == 0


def test_steps_2_5_is_refused_on_the_default_model(mini_page):
    page = mini_page
    page.fill("#prompt textarea", README_PROMPT)
    upload(page, 1, *ID0006)
    set_number(page, "steps", 2.5)
    page.click("#generate")
    text = error_text(page)
    assert "Steps (the number of denoising steps) must be a positive integer, got 2.5." in text, text


def test_a_bad_upload_on_the_default_model_shows_a_readable_error(mini_page, tmp_path):
    page = mini_page
    notes = tmp_path / "notes.png"
    notes.write_text("These are notes, not a photo.")
    page.fill("#prompt textarea", README_PROMPT)
    upload(page, 1, str(notes))
    page.click("#generate")
    text = error_text(page)
    assert "notes.png cannot be read as an image" in text, text
    assert "Traceback" not in page.content() and str(tmp_path) not in text
    page.evaluate("window.scrollTo(0, 0)")  # the prompt and the upload beside the message
    page.wait_for_timeout(800)  # the message slides in
    screenshot(page, "demo-error.png", tmp_path, full_page=False, readme=True)  # it floats over the visible part
