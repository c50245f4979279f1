"""``python -m facediffuser.lab.mini.snf_guidance``: SNF's stage-II masks and saliency peaks per guidance scale."""

from __future__ import annotations

import json

from PIL import Image

from facediffuser.lab.mini import snf_guidance


def test_snf_guidance_measures_each_scale_and_writes_its_table_and_figure(tmp_path, capsys):
    data = tmp_path / "people"
    for k, person in enumerate(("ada", "bob")):
        (data / person).mkdir(parents=True)
        Image.new("RGB", (48, 48), (200 - 40 * k, 150, 120)).save(data / person / "1.png")
    (data / "subjects.json").write_text(json.dumps({"ada": "woman", "bob": "man"}))
    out = tmp_path / "snf"
    argv = ["--model", "tiny", "--data", str(data), "--steps", "4", "--scales", "0.5", "3", "--out", str(out)]
    assert snf_guidance.main(argv) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| 0.5 |") or line.startswith("| 3 |")]
    assert len(rows) == 2
    cells = [[float(c) for c in row.strip("|").split("|")] for row in rows]
    for _, share, peak_s, peak_t, _ in cells:
        assert 0 <= share <= 1 and peak_s >= 1 and peak_t >= 1  # a softmax's max times its size is at least 1
    assert cells[1][4] == 1.0  # the largest scale agrees with itself
    # A smaller scale flattens both softmax-normalized saliency maps (|w R| scaled down before the softmax); the
    # tiny models' responses are small, so the peaks differ below the table's 2 decimals: read the measured floats.
    from facediffuser.io.loading import load_pipeline

    pipe = load_pipeline("tiny", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    results = snf_guidance.measure(pipe, snf_guidance.people(data, 2), [0.5, 3.0], 4, 7)
    for key in ("peak_s", "peak_t"):
        assert 1.0 < results[0.5][key] < results[3.0][key], key
    assert (out / "snf.md").read_text() == text.rstrip("\n") + "\n"
    assert (out / "snf.png").stat().st_size > 5_000
