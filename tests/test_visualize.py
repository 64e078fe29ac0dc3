"""Pictures of results: the PNG grid, the HTML page, the explain graphs' attention, the quickstart."""

from __future__ import annotations

import html.parser

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

HOSTILE = '<script>alert(1)</script> a man in a "red" shirt & blue jeans'


@pytest.fixture(scope="module")
def search(exported_bundle):
    from tbps_runtime.search import PersonSearch

    return PersonSearch.from_bundle(exported_bundle, threads=1)  # exported with the explain graphs


@pytest.fixture(scope="module")
def test_records(synth_root):
    from tbps_train.data.readers import read_split

    return read_split("cuhk-pedes", synth_root, "test")


@pytest.fixture(scope="module")
def gallery(search, test_records, tmp_path_factory):
    path = tmp_path_factory.mktemp("gallery") / "g.npy"
    search.index([r.image_path for r in test_records], path, identities=[r.person_id for r in test_records])
    return path


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Collector:
    parser = _Collector()
    parser.feed(page)
    parser.close()
    return parser


def test_rank_show_and_html_escape_a_hostile_query(gallery, tmp_path):
    from tbps_runtime.cli.search import rank_command

    png, page = tmp_path / "r.png", tmp_path / "r.html"
    result = CliRunner().invoke(rank_command, ["--gallery", str(gallery), "--query", HOSTILE, "--query", "red shirt",
                                               "-k", "3", "--show", str(png), "--html", str(page), "--quiet"])
    assert result.exit_code == 0, result.output
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 3 * 96 and image.height > 2 * 240
    text = page.read_text(encoding="utf-8")
    parsed = _parse(text)
    assert "script" not in parsed.tags  # the query's tag is text, not markup
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert any(HOSTILE in chunk for chunk in parsed.text)  # shown to the reader as typed
    assert parsed.tags.count("img") == 6 and text.count("data:image/png;base64,") == 6


def test_frames_are_green_for_hits_and_red_for_misses(test_records, tmp_path):
    from tbps_runtime.report.draw import CROP_SIZE, HIT, MISS, TEXT_WIDTH, UNKNOWN, draw_results
    from tbps_runtime.search import Match

    hit, miss = test_records[0], next(r for r in test_records if r.person_id != test_records[0].person_id)
    matches = [Match(1, 5.0, 0, str(hit.image_path), hit.person_id),
               Match(2, 4.0, 1, str(miss.image_path), miss.person_id)]
    path = draw_results(["q1", "q2"], [matches, matches], tmp_path / "f.png",
                        query_identities=[hit.person_id, None])
    image = np.asarray(Image.open(path).convert("RGB"))
    pad, frame = 12, 5
    x0 = pad + TEXT_WIDTH + pad  # first crop's frame, left edge
    cell = CROP_SIZE[1] + 2 * frame + pad
    mid = pad + frame + CROP_SIZE[0] // 2  # half way down the first row's frame
    assert tuple(image[mid, x0 + 1]) == HIT
    assert tuple(image[mid, x0 + cell + 1]) == MISS
    row_h = CROP_SIZE[0] + 2 * frame + 40 + pad
    assert tuple(image[mid + row_h, x0 + 1]) == UNKNOWN  # identity of the second query unknown


def test_explain_maps_have_the_right_shapes_and_sum_as_attention(search, test_records):
    from tbps_runtime.contract import IMAGE_EXPLAIN_TOWER, TEXT_EXPLAIN_TOWER

    manifest = search.manifest
    d, p = manifest.num_coarse, manifest.num_fine
    _, _, h, w = manifest.towers[IMAGE_EXPLAIN_TOWER.name]["outputs"][1]["shape"]
    assert TEXT_EXPLAIN_TOWER.onnx_file in manifest.files and IMAGE_EXPLAIN_TOWER.onnx_file in manifest.files
    paths = [r.image_path for r in test_records[:3]]
    explanation = search.explain("a woman in a red coat and black boots", paths)
    assert explanation.maps.shape == (3, d, h, w)
    np.testing.assert_allclose(explanation.maps.sum(axis=(2, 3)), 1.0, atol=1e-5)  # softmax over h*w positions
    assert explanation.heatmaps.shape == (3, h, w)
    assert explanation.token_weights.shape == (d + p, len(explanation.tokens))
    np.testing.assert_allclose(explanation.token_weights.sum(axis=1), 1.0, atol=1e-5)  # over the tokens
    assert explanation.tokens[0] == "[CLS]" and explanation.tokens[-1] == "[SEP]"


def test_padding_gets_no_text_attention(search):
    from tbps_runtime.model.attention import text_attention

    _, mask, attention = text_attention(search.encoder, ["red", "a man in a long grey coat with a black bag"])
    assert attention.shape == (2, search.manifest.num_coarse + search.manifest.num_fine, mask.shape[1])
    assert mask[0].sum() < mask.shape[1]
    assert np.all(attention[0][:, mask[0] == 0] == 0)
    np.testing.assert_allclose(attention.sum(axis=2), 1.0, atol=1e-5)


def test_explain_draws_heat_maps_and_explain_needs_a_picture(gallery, tmp_path):
    from tbps_runtime.cli.search import rank_command

    png, page = tmp_path / "e.png", tmp_path / "e.html"
    args = ["--gallery", str(gallery), "--query", HOSTILE, "-k", "2", "--quiet"]
    result = CliRunner().invoke(rank_command, [*args, "--show", str(png), "--html", str(page), "--explain"])
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert "script" not in _parse(text).tags and 'class="att"' in text  # one attention line per decoder token
    with Image.open(png) as image:
        assert image.format == "PNG"
    result = CliRunner().invoke(rank_command, [*args, "--explain"])
    assert result.exit_code == 2 and "--show" in result.output


@pytest.mark.slow
def test_quickstart_runs_the_whole_chain_and_reuses_it(tmp_path):
    from tbps_export.cli import quickstart_command

    work = tmp_path / "qs"
    args = ["--workdir", str(work), "--preset", "tiny", "--ids", "20", "--quiet"]
    result = CliRunner().invoke(quickstart_command, args)
    assert result.exit_code == 0, result.output
    made = ["results.html", "results.png", "explain.png", "eval.json", "m.pt", "g.npy", "g.json",
            "m.bundle/manifest.json", "m.bundle/image_tower.explain.onnx", "m.bundle/text_tower.explain.onnx"]
    for name in made:
        assert (work / name).is_file(), name
    assert str(work / "results.html") in result.output
    with Image.open(work / "results.png") as image:
        assert image.format == "PNG"
    stamps = {name: (work / name).stat().st_mtime_ns for name in made}
    again = CliRunner().invoke(quickstart_command, args)
    assert again.exit_code == 0, again.output
    assert {name: (work / name).stat().st_mtime_ns for name in made} == stamps  # nothing redone
    other = CliRunner().invoke(quickstart_command, [*args, "--row", "full"])  # the paper's full model
    assert other.exit_code == 2 and "another model" in other.output and "use_coarse" in other.output
    assert {name: (work / name).stat().st_mtime_ns for name in made} == stamps  # never trained over


def test_quickstart_refuses_an_unknown_row_before_any_work(tmp_path):
    from tbps_export.cli import quickstart_command

    result = CliRunner().invoke(quickstart_command, ["--workdir", str(tmp_path / "qs"), "--row", "fuil", "-q"])
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert "unknown row 'fuil'" in result.output and "baseline-sum-warmup" in result.output
    assert not (tmp_path / "qs" / "data").exists()
