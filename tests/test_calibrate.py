"""The score threshold of ``--min-score auto``: the order statistic on hand-made scores, a bundle calibrated on
the synthetic val split (checked against an independent recount), the manifest record's validation, the commands."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_assertions import assert_user_error
from tbps_export.calibrate import (allowed_false_matches, calibrate_bundle, calibrate_embeddings,
                                   false_match_threshold, threshold_figures)
from tbps_export.cli import calibrate_command
from tbps_runtime.atomic import sha256_file
from tbps_runtime.errors import BundleError, ConfigError
from tbps_runtime.model.bundle import load_manifest, score_threshold, verify_files

# float32 spacing (one ulp) at the hand-made scores below: 2^-24 in [0.5, 1), 2^-25 in [0.25, 0.5), 2^-27 near 0.1
ABOVE = {0.9: float(np.float32(0.9)) + 2 ** -24, 0.5: 0.5 + 2 ** -24, 0.4: float(np.float32(0.4)) + 2 ** -25,
         0.3: float(np.float32(0.3)) + 2 ** -25, 0.1: float(np.float32(0.1)) + 2 ** -27, 2.0: 2.0 + 2 ** -22,
         1.0: 1.0 + 2 ** -23}


def rate(scores, threshold) -> float:
    """The fraction of ``scores`` at or above ``threshold``, compared in float32 as the runtime does."""
    scores = np.asarray(scores, np.float32)
    return float(np.mean(scores >= np.float32(threshold)))


def below(threshold: float) -> float:
    """The float32 number just below ``threshold``."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


# ---- the order statistic ---------------------------------------------------------------

@pytest.mark.parametrize("f, expected, passing", [
    (0.1, 0.9, 0),  # 0.1 * 5 < 1: not even the best stranger passes
    (0.2, 0.5, 1),
    (0.4, 0.5, 1),  # 2 may pass, but the two 0.5s are tied: both stay below, one passes
    (0.6, 0.3, 3),
    (0.99, 0.1, 4),  # all but the lowest: all five would be a rate of 1
])
def test_threshold_of_hand_made_scores(f, expected, passing):
    scores = [0.5, 0.9, 0.1, 0.5, 0.3]
    t = false_match_threshold(scores, f)
    assert t == ABOVE[expected]
    assert rate(scores, t) == passing / 5 <= f
    assert rate(scores, below(t)) > f


def test_the_allowed_count_is_the_float_rate_a_reader_checks():
    """0.29 * 100 is 28.999999999999996 in floats, yet 29 / 100 <= 0.29: 29 strangers may pass, not 28."""
    assert allowed_false_matches(100, 0.29) == 29
    assert allowed_false_matches(100, 0.3) == 30
    assert allowed_false_matches(7, 0.3) == 2
    assert allowed_false_matches(5, 0.1) == 0
    scores = np.arange(100, dtype=np.float32)  # 0..99: the 30th highest is 70
    assert false_match_threshold(scores, 0.29) == 70 + 2 ** -17  # float32 spacing in [64, 128)


def test_figures_of_a_hand_made_score_matrix():
    """Captions A, B (identity 1) and C (identity 2) against images of identities 1, 1, 2, 3."""
    scores = [[0.9, 0.2, 0.4, 0.1],
              [0.3, 0.1, 0.5, 0.2],
              [0.6, 0.0, 0.7, 0.3]]
    figures = threshold_figures(scores, [1, 1, 2], [1, 1, 2, 3], 0.3)
    # non-matching, highest first: 0.6 0.5 0.4 0.3 0.2 0.1 0.0; 2 of 7 may pass (3/7 > 0.3): t just above 0.4
    assert figures == {"value": ABOVE[0.4], "false_match_rate": 0.3, "true_match_rate": 2 / 5,  # 0.9, 0.7
                       "found_rate": 2 / 3,  # B's best match (0.3) is below t
                       "non_matching_pairs": 7, "matching_pairs": 5}


def test_perfect_separation_finds_everyone():
    scores = [[4.0, 1.0, 0.0], [1.0, 3.0, 2.0], [0.0, 2.0, 5.0]]
    strict = threshold_figures(scores, [1, 2, 3], [1, 2, 3], 0.01)
    assert strict == {"value": ABOVE[2.0], "false_match_rate": 0.01, "true_match_rate": 1.0, "found_rate": 1.0,
                      "non_matching_pairs": 6, "matching_pairs": 3}
    loose = threshold_figures(scores, [1, 2, 3], [1, 2, 3], 0.5)  # 3 of 6 may pass; the 4th highest is 1.0
    assert loose["value"] == ABOVE[1.0] and loose["true_match_rate"] == 1.0


@pytest.mark.parametrize("f", [0.01, 0.3, 0.5, 0.7, 0.95])
def test_blocks_of_captions_give_the_whole_matrix_answer(f):
    """Streamed in blocks of 1 and 3 captions (the lower side of the order statistic is kept for f > 0.5)."""
    rng = np.random.default_rng(0)
    captions = rng.normal(size=(11, 3, 4)).astype(np.float32)
    images = rng.normal(size=(6, 3, 4)).astype(np.float32)
    images /= np.linalg.norm(images, axis=-1, keepdims=True)
    caption_ids, image_ids = [0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 5], [0, 1, 2, 3, 4, 5]
    flat = captions / np.linalg.norm(captions, axis=-1, keepdims=True)
    whole = threshold_figures(flat.reshape(11, -1) @ images.reshape(6, -1).T, caption_ids, image_ids, f)
    for block in (1, 3):
        assert calibrate_embeddings(captions, caption_ids, images, image_ids, f, block_captions=block) == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([-1.5, 0.0, 0.25, 0.5, 0.5, 2.0, 3.0]), min_size=1, max_size=40),
       st.floats(min_value=1e-6, max_value=1 - 1e-6))
def test_the_rate_is_never_exceeded_and_is_as_loose_as_allowed(scores, f):
    """Heavily tied scores: at t at most f pass; at the next lower float32 more than f would."""
    t = false_match_threshold(scores, f)
    assert rate(scores, t) <= f < rate(scores, below(t))


@pytest.mark.parametrize("f", [0, 1, -0.1, 1.5, float("nan"), float("inf"), True, "0.1"])
def test_a_rate_outside_0_1_is_refused(f):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        false_match_threshold([0.1, 0.2], f)


def test_one_identity_or_no_stranger_is_refused():
    with pytest.raises(ConfigError, match="2 identities"):
        threshold_figures([[1.0, 0.5]], [7], [7, 7])
    with pytest.raises(ConfigError, match="non-matching"):
        false_match_threshold([], 0.1)


# ---- a bundle ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibrated(exported_bundle, synth_root, tmp_path_factory):
    """A copy of the exported bundle, calibrated on synth_root's val split at f = 0.05: (bundle, record, before)
    with ``before`` the manifest and file SHA-256s of the copy before calibrating."""
    bundle = tmp_path_factory.mktemp("calibrate") / "m.bundle"
    shutil.copytree(exported_bundle, bundle)
    before = (json.loads((bundle / "manifest.json").read_text()),
              {p.name: sha256_file(p) for p in bundle.iterdir() if p.name != "manifest.json"})
    record = calibrate_bundle(bundle, "cuhk-pedes", synth_root, split="val", false_match_rate=0.05, threads=1)
    return bundle, record, before


def test_the_record_is_in_the_manifest_and_nothing_else_changed(calibrated):
    bundle, record, (manifest_before, files_before) = calibrated
    manifest = load_manifest(bundle)
    assert manifest.score_threshold == record and score_threshold(manifest) == record["value"]
    assert "score_threshold" not in manifest_before  # not calibrated: not written (older runtimes read it)
    after = json.loads((bundle / "manifest.json").read_text())
    assert {k: v for k, v in after.items() if k != "score_threshold"} == \
        {k: v for k, v in manifest_before.items() if k != "score_threshold"}  # fingerprint, files, ... kept
    assert {p.name: sha256_file(p) for p in bundle.iterdir() if p.name != "manifest.json"} == files_before
    verify_files(bundle, manifest)
    # synth_root's val split: 6 identities x 3 images, 2 captions each
    assert (record["dataset"], record["split"], record["captions"], record["images"]) == ("cuhk-pedes", "val", 36, 18)
    assert (record["matching_pairs"], record["non_matching_pairs"]) == (36 * 3, 36 * 15)


def test_the_rates_agree_with_an_independent_recount(calibrated, synth_root):
    """Embedded again through the runtime, scored with numpy: at most 5% of strangers reach the threshold, more
    would at the next lower stranger's score; the true-match and found rates are those of the record."""
    from tbps_runtime.search import PersonSearch
    from tbps_train.data.readers import read_split

    bundle, record, _ = calibrated
    records = read_split("cuhk-pedes", synth_root, "val")
    search = PersonSearch.from_bundle(bundle, threads=1)
    text = search.embed_texts([c for r in records for c in r.captions])
    pixels = search.embed_images([r.image_path for r in records])
    text = text / np.maximum(np.linalg.norm(text, axis=-1, keepdims=True), np.float32(1e-12))
    scores = text.reshape(len(text), -1) @ pixels.reshape(len(pixels), -1).T  # (36, 18) float32
    same = np.array([r.person_id for r in records for _ in r.captions])[:, None] == \
        np.array([r.person_id for r in records])[None, :]
    strangers, t = scores[~same], record["value"]
    assert rate(strangers, t) <= 0.05
    next_lower = strangers[strangers < np.float32(t)].max()
    assert rate(strangers, next_lower) > 0.05
    assert record["true_match_rate"] == rate(scores[same], t)
    assert record["found_rate"] == rate(np.where(same, scores, -np.inf).max(axis=1), t)


def test_calibrating_again_replaces_the_record(calibrated, synth_root, tmp_path):
    bundle = tmp_path / "m.bundle"
    shutil.copytree(calibrated[0], bundle)
    loose = calibrate_bundle(bundle, "cuhk-pedes", synth_root, split="val", false_match_rate=0.5, threads=1)
    assert load_manifest(bundle).score_threshold == loose and loose["value"] < calibrated[1]["value"]


# ---- the manifest record ----------------------------------------------------------------

@pytest.mark.parametrize("change, fragment", [
    ({"value": "high"}, "score_threshold.value is 'high'"),
    ({"value": 99.0}, "score_threshold.value is 99.0, expected a finite number within [-K, K]"),
    ({"value": True}, "score_threshold.value is True"),
    ({"false_match_rate": 0}, "score_threshold.false_match_rate is 0, expected a number in (0, 1)"),
    ({"true_match_rate": 1.5}, "score_threshold.true_match_rate is 1.5"),
    ({"found_rate": None}, "score_threshold.found_rate is None"),
    ({"captions": 0}, "score_threshold.captions is 0, expected a positive integer"),
    ({"matching_pairs": -1}, "score_threshold.matching_pairs is -1"),
    ({"images": 2.5}, "score_threshold.images is 2.5"),
    ({"dataset": ""}, "score_threshold.dataset is ''"),
    ({"split": 3}, "score_threshold.split is 3"),
    ({"matching_pairs": 1}, "pairs (1 matching + 540 non-matching) are not its 36 captions x 18 images"),
    ({"value": None, "extra": 1}, "score_threshold.extra is not a field of it"),
], ids=lambda v: str(v)[:40])
def test_a_malformed_record_is_refused(calibrated, tmp_path, change, fragment):
    manifest = json.loads((calibrated[0] / "manifest.json").read_text())
    manifest["score_threshold"].update(change)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="malformed score_threshold") as error:
        load_manifest(tmp_path)
    assert fragment in str(error.value)


@pytest.mark.parametrize("record, fragment", [
    ([1.0], "mistypes score_threshold"),
    ({"value": 1.0}, "score_threshold.captions is missing"),
])
def test_a_record_that_is_not_one_is_refused(calibrated, tmp_path, record, fragment):
    manifest = json.loads((calibrated[0] / "manifest.json").read_text())
    manifest["score_threshold"] = record
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=fragment):
        load_manifest(tmp_path)


def test_an_uncalibrated_bundle_has_no_threshold(exported_bundle):
    assert score_threshold(load_manifest(exported_bundle)) is None


# ---- the commands ------------------------------------------------------------------------

def invoke(command, args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("rate_value, fragment", [("1.5", "between 0 and 1"), ("0", "between 0 and 1"),
                                                  ("often", "often")])
def test_calibrate_refuses_a_bad_rate(exported_bundle, synth_root, rate_value, fragment):
    result = invoke(calibrate_command, ["--bundle", exported_bundle, "--dataset", "cuhk-pedes", "--root", synth_root,
                                        "--false-match-rate", rate_value])
    assert_user_error(result, fragment)


def test_calibrate_names_the_splits_a_dataset_has(exported_bundle, synth_root):
    result = invoke(calibrate_command, ["--bundle", exported_bundle, "--dataset", "icfg-pedes", "--root", synth_root])
    assert_user_error(result, "icfg-pedes has no 'val' split", "'train', 'test'")


def test_calibrate_json_is_the_record(calibrated, synth_root, tmp_path):
    bundle = tmp_path / "m.bundle"
    shutil.copytree(calibrated[0], bundle)
    result = invoke(calibrate_command, ["--bundle", bundle, "--dataset", "cuhk-pedes", "--root", synth_root,
                                        "--false-match-rate", "0.05", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == load_manifest(bundle).score_threshold == calibrated[1]


@pytest.mark.parametrize("args, fragment", [
    (["--calibrate-dataset", "cuhk-pedes"], "go together"),
    (["--calibrate-root", "{root}"], "go together"),
    (["--false-match-rate", "0.1"], "add --calibrate-dataset"),
    (["--calibrate-dataset", "cuhk-pedes", "--calibrate-root", "{root}", "--false-match-rate", "2"], "between 0"),
    (["--calibrate-dataset", "icfg-pedes", "--calibrate-root", "{root}"], "no 'val' split"),
])
def test_export_refuses_bad_calibration_options_before_exporting(tmp_path, synth_root, args, fragment):
    from tbps_export.cli import export_command

    argv = ["--ckpt", tmp_path / "m.pt", "-o", tmp_path / "out.bundle", "--quiet",
            *[a.format(root=synth_root) for a in args]]
    assert_user_error(invoke(export_command, argv), fragment)
    assert not (tmp_path / "out.bundle").exists()


def test_export_calibrates_the_new_bundle(exported_bundle, synth_root, tmp_path, monkeypatch):
    """The export itself stood in by a copy of the session's bundle: what is tested is the calibration after it."""
    import tbps_export.bundle_writer as writer
    from tbps_export.cli import export_command

    def copy_bundle(checkpoint, output, **options):
        shutil.copytree(exported_bundle, output)
        return output

    monkeypatch.setattr(writer, "export_bundle", copy_bundle)
    output = tmp_path / "out.bundle"
    result = invoke(export_command, ["--ckpt", tmp_path / "m.pt", "-o", output, "--quiet", "--calibrate-dataset",
                                     "cuhk-pedes", "--calibrate-root", synth_root, "--false-match-rate", "0.05"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(output)  # stdout: the bundle's path only
    record = load_manifest(output).score_threshold
    assert record["false_match_rate"] == 0.05 and record["split"] == "val" and record["images"] == 18


def test_an_int8_bundle_is_calibrated_with_its_own_towers(int8_bundle, calibrated, synth_root, tmp_path):
    bundle = tmp_path / "m.int8.bundle"
    shutil.copytree(int8_bundle, bundle)
    record = calibrate_bundle(bundle, "cuhk-pedes", synth_root, split="val", false_match_rate=0.05, threads=1)
    assert load_manifest(bundle).score_threshold == record
    assert record["value"] != calibrated[1]["value"]  # int8 embeddings score differently


def test_quickstart_calibrates_its_bundle_once(calibrated, synth_root, tmp_path):
    from tbps_export import cli as export_cli
    from tbps_export import quickstart

    bundle = tmp_path / "m.bundle"
    shutil.copytree(calibrated[0], bundle)  # calibrated at f = 0.05: the quickstart's own is f = 0.01
    record = quickstart._calibrate(bundle, synth_root, quiet=True, threads=1)
    assert record["false_match_rate"] == 0.01 and load_manifest(bundle).score_threshold == record
    stamp = (bundle / "manifest.json").stat().st_mtime_ns
    assert quickstart._calibrate(bundle, synth_root, quiet=True, threads=1) == record
    assert (bundle / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert "of strangers pass it" in export_cli._threshold_line(record)
    assert "not calibrated" in export_cli._threshold_line({})


def test_a_val_split_of_one_identity_is_refused_and_the_quickstart_goes_on(calibrated, tmp_path):
    from tbps_export import quickstart
    from tbps_runtime.synth.dataset import generate

    data = generate(tmp_path / "data", ids=8, images_per_id=1, seed=0, progress=False)  # val: 1 identity
    with pytest.raises(ConfigError, match="holds 1 identity"):
        calibrate_bundle(calibrated[0], "cuhk-pedes", data)
    bundle = tmp_path / "m.bundle"
    shutil.copytree(calibrated[0], bundle)
    (bundle / "manifest.json").write_text(json.dumps({**json.loads((bundle / "manifest.json").read_text()),
                                                       "score_threshold": {}}))
    assert quickstart._calibrate(bundle, data, quiet=True, threads=1) == {}
    assert load_manifest(bundle).score_threshold == {}
